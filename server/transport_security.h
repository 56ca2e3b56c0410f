// Transport security of the gRPC listener: TLS from a certificate and key in PEM files, mTLS when
// a client CA is given, and the files re-read whenever they change (gRPC's file-watcher
// certificate provider), so a rotated certificate is served to new connections without a
// restart while existing connections keep theirs. Also the server-builder option that leaves
// server reflection out (--reflection off, and the health-only listener).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"

namespace mnemo::server {

struct TlsFiles {
  std::string cert;       // --tls-cert: the server's certificate chain (PEM), leaf first
  std::string key;        // --tls-key: its private key (PEM)
  std::string client_ca;  // --tls-client-ca: CA bundle (PEM) client certificates must chain to
  absl::Duration reload_interval = absl::Seconds(10);  // how often the files are checked

  bool enabled() const { return !cert.empty(); }
  bool mutual() const { return !client_ca.empty(); }
};

// INVALID_ARGUMENT unless the flags make sense together: cert and key both or neither, a client
// CA only with them, a positive reload interval.
absl::Status CheckTlsFlags(const TlsFiles& files);

// The contents of the files (client_ca empty when not mutual).
struct TlsPem {
  std::string cert, key, client_ca;
  bool operator==(const TlsPem& other) const {
    return cert == other.cert && key == other.key && client_ca == other.client_ca;
  }
};
// Reads the files; INVALID_ARGUMENT naming the one that cannot be read.
absl::StatusOr<TlsPem> ReadTlsPem(const TlsFiles& files);
// INVALID_ARGUMENT naming the file unless `pem` holds a certificate chain, an unencrypted private
// key that matches its first certificate and (mutual) a CA bundle with at least one certificate.
// Returns when the (first) certificate expires. Logs a warning when it has expired or is not
// valid yet (a server may start with one that is about to be replaced).
absl::StatusOr<absl::Time> ValidateTlsPem(const TlsPem& pem, const TlsFiles& files);

// Plaintext credentials when TLS is off; otherwise TLS (and client certificates required and
// verified when mutual) from gRPC's provider that re-reads the files every reload_interval
// (rounded up to whole seconds, at least 1 s). It serves whatever it reads, broken files
// included: give it files that only ever hold a checked set (CertificateMirror).
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsFiles& files);

// Credentials for this server's own calls to other replicas (hand-offs) when their listeners
// speak TLS: the server's certificate and key as the client identity (re-read like the server's),
// the client CA (when given; else the system's roots) to verify the peer's chain. The peer's
// host name is not checked (replicas reach each other by pod address): any certificate from that
// CA is a replica. Insecure credentials when TLS is off.
std::shared_ptr<grpc::ChannelCredentials> MakeReplicaChannelCredentials(const TlsFiles& files);

// "plaintext", "TLS (cert ..., reloaded every 10s)" or "mTLS (...)" for the start-up log.
std::string DescribeTransport(const TlsFiles& files);

// A ServerBuilder option that removes the named plugins. gRPC's reflection library registers its
// plugin for every ServerBuilder at load time; this is how a listener goes without it.
class WithoutPlugins final : public grpc::ServerBuilderOption {
 public:
  explicit WithoutPlugins(std::vector<std::string> names) : names_(std::move(names)) {}
  void UpdateArguments(grpc::ChannelArguments* /*args*/) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override;

 private:
  std::vector<std::string> names_;
};

// The name gRPC's reflection plugin registers under.
inline constexpr char kReflectionPlugin[] = "proto_server_reflection";

}  // namespace mnemo::server
