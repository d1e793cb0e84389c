// Transport security and authentication of the query service, shared by the
// gRPC server and the HTTP front end (see README.md, "TLS and authentication"):
//
//   TlsFiles     the server certificate (chain), its private key and, for
//                mTLS, the CA that client certificates must chain to; read
//                and checked once at startup (readable, PEM, key matches the
//                certificate) so that a bad file is a clear error, not a
//                failed listen or a crash.
//   BearerToken  a shared secret that clients send as
//                "Authorization: Bearer <token>"; compared in constant time.
//
// Plaintext and no token stay the defaults.
#ifndef IMAGESEARCH_SERVICES_QUERY_AUTH_H_
#define IMAGESEARCH_SERVICES_QUERY_AUTH_H_

#include <array>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

typedef struct ssl_ctx_st SSL_CTX;  // OpenSSL's, as <openssl/types.h> declares it.

namespace grpc {
class ChannelCredentials;
class ServerCredentials;
}  // namespace grpc

namespace imagesearch {

struct TlsFiles {
  std::string cert_file;       // PEM: the server certificate, then any intermediates.
  std::string key_file;        // PEM: its private key (unencrypted).
  std::string client_ca_file;  // PEM: CA certificate(s) for client certs; "" = no mTLS.
  // The files' contents, as read and checked by LoadTlsFiles.
  std::string cert_pem;
  std::string key_pem;
  std::string client_ca_pem;

  bool mtls() const { return !client_ca_file.empty(); }
};

// Reads and checks the files: each must be readable and hold PEM of the right
// kind, the key must match the certificate, and the client CA file (if given)
// must hold at least one certificate. The error names the flag, the file and
// what is wrong. Warns (does not fail) if the certificate has expired or is
// not yet valid. Errors name the flags --tls_cert, --tls_key and --tls_client_ca.
absl::StatusOr<TlsFiles> LoadTlsFiles(const std::string& cert_file, const std::string& key_file,
                                      const std::string& client_ca_file);

// The server TLS of a binary's --tls_cert/--tls_key/--tls_client_ca flags:
// none when all three are empty, else LoadTlsFiles' (the cert and key must
// both be given).
absl::StatusOr<std::optional<TlsFiles>> LoadServerTlsFlags(const std::string& cert_file,
                                                           const std::string& key_file,
                                                           const std::string& client_ca_file);

// Sets up an OpenSSL server context (the HTTPS front end) from checked files:
// TLS 1.2 or later, the certificate chain and key, and with mTLS a required,
// verified client certificate.
absl::Status ConfigureServerSslContext(SSL_CTX* ctx, const TlsFiles& tls);

// gRPC server credentials: plaintext for null, else TLS with the checked
// files (and with mTLS a required, verified client certificate).
std::shared_ptr<grpc::ServerCredentials> GrpcServerCredentials(const TlsFiles* tls);

// Credentials of a client's channels to servers of ours, from a binary's
// --<flag>_ca, --<flag>_cert and --<flag>_key (imagesearch-router toward its
// shards: flag "shard_tls"): plaintext when all are empty; else TLS trusting
// the CA file's certificates, and with both cert and key a client
// certificate (for servers that require one). Errors name the flag and file.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> LoadClientTlsFlags(
    absl::string_view flag, const std::string& ca_file, const std::string& cert_file,
    const std::string& key_file);

// The token in the file of --<flag> (its contents without surrounding
// whitespace), checked as BearerToken::FromString checks it; for a client
// that sends it.
absl::StatusOr<std::string> ReadBearerTokenFile(absl::string_view flag, const std::string& path);

// A bearer token, kept only as its SHA-256 digest.
class BearerToken {
 public:
  // The token is the file's contents without surrounding whitespace; it must
  // be non-empty, one line of visible ASCII (no spaces).
  static absl::StatusOr<BearerToken> FromFile(const std::string& path);
  static absl::StatusOr<BearerToken> FromString(absl::string_view token);

  // True if `authorization` is "Bearer <token>" (scheme case-insensitive) with
  // this token. Takes the same time whatever the presented token is: both
  // sides are hashed and the digests compared with CRYPTO_memcmp.
  bool Accepts(absl::string_view authorization) const;

 private:
  BearerToken() = default;
  std::array<unsigned char, 32> digest_{};
};

// A server's --tls_cert/--tls_key/--tls_client_ca (LoadServerTlsFlags) and
// --auth_token_file (BearerToken::FromFile; empty: no token), checked before
// anything starts: the query service, the router and the ingest service.
struct ServerSecurity {
  std::optional<TlsFiles> tls;       // None: plaintext.
  std::optional<BearerToken> token;  // None: no token required.
};
absl::StatusOr<ServerSecurity> LoadServerSecurityFlags(const std::string& cert_file,
                                                       const std::string& key_file,
                                                       const std::string& client_ca_file,
                                                       const std::string& token_file);

}  // namespace imagesearch

#endif  // IMAGESEARCH_SERVICES_QUERY_AUTH_H_
