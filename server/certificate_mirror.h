// CertificateMirror: in-memory copies of the TLS files that only ever hold a checked set, for
// gRPC's file-watcher certificate provider to read. gRPC 1.51's watcher serves whatever it reads:
// a file that does not parse, or a key replaced before its certificate, makes every new handshake
// fail until the files are fixed. The mirror reads the files every reload interval; a changed set
// that passes ValidateTlsPem replaces the copies, one that does not is logged once and the last
// good set stays served.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "server/transport_security.h"

namespace mnemo::server {

class CertificateMirror {
 public:
  // Checks the flags and the files now (INVALID_ARGUMENT naming the file), makes the copies and
  // starts the thread that checks the files every files.reload_interval.
  static absl::StatusOr<std::unique_ptr<CertificateMirror>> Start(const TlsFiles& files);
  // Stops the thread and closes the copies.
  ~CertificateMirror();
  CertificateMirror(const CertificateMirror&) = delete;
  CertificateMirror& operator=(const CertificateMirror&) = delete;

  // The copies as files (/proc/self/fd/N paths, valid while the mirror lives), to watch every
  // second: reading them is cheap, so a rotation is served within one reload interval and a
  // second.
  const TlsFiles& copies() const { return copies_; }

  // Reads and checks the files once: OK when unchanged or copied, else why the change is refused.
  // Called by the thread; thread-safe.
  absl::Status Poll();

  // From now on, keeps in `registry` mnemo_tls_certificate_expiry_timestamp_seconds (when the
  // certificate served expires, Unix time) and mnemo_tls_reloads_total{result="ok"|"refused"}.
  void ExportMetrics(prometheus::Registry& registry);

 private:
  // One copy: a memfd whose descriptor number stays the same while its file is swapped
  // atomically (dup3), so a reader opening the path gets the old or the new contents, never a mix.
  struct MemFile {
    int fd = -1;
    absl::Status Write(const std::string& contents);
    std::string Path() const;
  };

  explicit CertificateMirror(TlsFiles files) : files_(std::move(files)) {}
  absl::Status Copy(const TlsPem& pem);
  void Loop();

  const TlsFiles files_;
  TlsFiles copies_;
  MemFile cert_, key_, client_ca_;
  std::mutex mu_;
  TlsPem served_;                // what the copies hold
  TlsPem refused_;               // the last set refused (logged once)
  absl::Status refused_status_;  // and why
  absl::Time expiry_;            // of the certificate served
  prometheus::Gauge* expiry_gauge_ = nullptr;
  prometheus::Counter* reloaded_ = nullptr;
  prometheus::Counter* refused_count_ = nullptr;
  bool stop_ = false;
  std::condition_variable stop_cv_;
  std::thread thread_;
};

}  // namespace mnemo::server
