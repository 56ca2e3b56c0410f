// The checked in-memory copies of the TLS files and the thread that refreshes them.
#include "server/certificate_mirror.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <sys/mman.h>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

#include "base/status_macros.h"

namespace mnemo::server {

absl::Status CertificateMirror::MemFile::Write(const std::string& contents) {
  const int fresh = ::memfd_create("mnemo-tls", MFD_CLOEXEC);
  if (fresh < 0) return absl::InternalError(absl::StrCat("memfd_create: ", std::strerror(errno)));
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fresh, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int saved = errno;
      ::close(fresh);
      return absl::InternalError(absl::StrCat("writing a TLS copy: ", std::strerror(saved)));
    }
    done += static_cast<size_t>(n);
  }
  if (fd < 0) {
    fd = fresh;
    return absl::OkStatus();
  }
  const int swapped = ::dup3(fresh, fd, O_CLOEXEC);
  const int saved = errno;
  ::close(fresh);
  if (swapped < 0) return absl::InternalError(absl::StrCat("dup3: ", std::strerror(saved)));
  return absl::OkStatus();
}

std::string CertificateMirror::MemFile::Path() const { return absl::StrCat("/proc/self/fd/", fd); }

absl::StatusOr<std::unique_ptr<CertificateMirror>> CertificateMirror::Start(const TlsFiles& files) {
  RETURN_IF_ERROR(CheckTlsFlags(files));
  ASSIGN_OR_RETURN(TlsPem pem, ReadTlsPem(files));
  ASSIGN_OR_RETURN(const absl::Time expiry, ValidateTlsPem(pem, files));
  std::unique_ptr<CertificateMirror> mirror(new CertificateMirror(files));
  RETURN_IF_ERROR(mirror->Copy(pem));
  mirror->expiry_ = expiry;
  mirror->copies_.cert = mirror->cert_.Path();
  mirror->copies_.key = mirror->key_.Path();
  if (files.mutual()) mirror->copies_.client_ca = mirror->client_ca_.Path();
  mirror->copies_.reload_interval = absl::Seconds(1);
  if (::access(mirror->copies_.cert.c_str(), R_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("TLS needs /proc mounted (gRPC reads the checked copies of the files through ",
                     mirror->copies_.cert, "): ", std::strerror(errno)));
  }
  mirror->thread_ = std::thread([m = mirror.get()] { m->Loop(); });
  return mirror;
}

CertificateMirror::~CertificateMirror() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (const int fd : {cert_.fd, key_.fd, client_ca_.fd}) {
    if (fd >= 0) ::close(fd);
  }
}

absl::Status CertificateMirror::Copy(const TlsPem& pem) {
  // The key last: until it is swapped, the watcher reads the old pair or a new certificate with
  // the old key, which fails only that refresh (the next one reads the whole new set).
  RETURN_IF_ERROR(cert_.Write(pem.cert));
  if (files_.mutual()) RETURN_IF_ERROR(client_ca_.Write(pem.client_ca));
  RETURN_IF_ERROR(key_.Write(pem.key));
  served_ = pem;
  return absl::OkStatus();
}

absl::Status CertificateMirror::Poll() {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<TlsPem> pem = ReadTlsPem(files_);
  absl::Status status = pem.status();
  if (pem.ok()) {
    if (*pem == served_) {
      refused_status_ = absl::OkStatus();
      return absl::OkStatus();
    }
    if (*pem == refused_ && !refused_status_.ok()) return refused_status_;
    absl::StatusOr<absl::Time> expiry = ValidateTlsPem(*pem, files_);
    status = expiry.status();
    if (status.ok()) status = Copy(*pem);
    if (status.ok()) {
      refused_ = TlsPem();
      refused_status_ = absl::OkStatus();
      expiry_ = *expiry;
      if (expiry_gauge_ != nullptr) {
        expiry_gauge_->Set(absl::ToDoubleSeconds(expiry_ - absl::UnixEpoch()));
        reloaded_->Increment();
      }
      std::fprintf(
          stderr, "mnemo-server: TLS files changed: new connections get the new certificate (%s)\n",
          DescribeTransport(files_).c_str());
      return status;
    }
    refused_ = *pem;
  } else if (!refused_status_.ok() && refused_status_.message() == status.message()) {
    return status;  // still unreadable: already logged
  }
  refused_status_ = status;
  if (refused_count_ != nullptr) refused_count_->Increment();
  std::fprintf(stderr,
               "mnemo-server: TLS files not reloaded: %s; new connections keep getting the "
               "certificate served so far\n",
               std::string(status.message()).c_str());
  return status;
}

void CertificateMirror::ExportMetrics(prometheus::Registry& registry) {
  std::lock_guard<std::mutex> lock(mu_);
  expiry_gauge_ = &prometheus::BuildGauge()
                       .Name("mnemo_tls_certificate_expiry_timestamp_seconds")
                       .Help("When the TLS certificate served expires (Unix time)")
                       .Register(registry)
                       .Add({});
  expiry_gauge_->Set(absl::ToDoubleSeconds(expiry_ - absl::UnixEpoch()));
  auto& reloads = prometheus::BuildCounter()
                      .Name("mnemo_tls_reloads_total")
                      .Help("Changed TLS files taken (ok) or refused, keeping the last good set")
                      .Register(registry);
  reloaded_ = &reloads.Add({{"result", "ok"}});
  refused_count_ = &reloads.Add({{"result", "refused"}});
}

void CertificateMirror::Loop() {
  const auto interval = absl::ToChronoNanoseconds(files_.reload_interval);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_cv_.wait_for(lock, interval, [this] { return stop_; })) {
    lock.unlock();
    (void)Poll();  // logs what it refuses
    lock.lock();
  }
}

}  // namespace mnemo::server
