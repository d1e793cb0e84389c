#include "services/query/auth.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "libs/common/status_macros.h"

namespace imagesearch {
namespace {

constexpr int64_t kMaxPemBytes = 1 << 20;

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

// Never prompts for a passphrase (OpenSSL's default reads the terminal).
int NoPassphrase(char*, int, int, void*) { return -1; }

// OpenSSL's queued errors as one line, and clears them.
std::string OpenSslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no detail from OpenSSL" : out;
}

BioPtr MemBio(const std::string& pem) {
  return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Every certificate in a PEM text, in order; none if it holds none.
std::vector<X509Ptr> ReadCerts(const std::string& pem) {
  std::vector<X509Ptr> certs;
  BioPtr bio = MemBio(pem);
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr)) {
    certs.emplace_back(x);
  }
  ERR_clear_error();  // The end of the text reads as "no start line".
  return certs;
}

absl::StatusOr<std::string> ReadPemFile(absl::string_view flag, const std::string& path) {
  auto text = ReadFileToString(path, kMaxPemBytes);
  if (!text.ok()) {
    return absl::Status(
        text.status().code(),
        absl::StrCat("--", flag, "=", path, ": cannot read: ", text.status().message()));
  }
  return text;
}

absl::Status PemError(absl::string_view flag, const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", path, ": ", what));
}

void WarnIfNotValidNow(X509* cert, const std::string& path) {
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) < 0) {
    LogWarning("--tls_cert=", path, ": the certificate has expired; clients will refuse it");
  } else if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0) {
    LogWarning("--tls_cert=", path, ": the certificate is not valid yet; clients will refuse it");
  }
}

std::array<unsigned char, 32> Sha256(absl::string_view data) {
  std::array<unsigned char, 32> digest{};
  unsigned int size = 0;
  EVP_Digest(data.data(), data.size(), digest.data(), &size, EVP_sha256(), nullptr);
  return digest;
}

}  // namespace

absl::StatusOr<TlsFiles> LoadTlsFiles(const std::string& cert_file, const std::string& key_file,
                                      const std::string& client_ca_file) {
  if (cert_file.empty() || key_file.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both --tls_cert and --tls_key (a PEM certificate and its private key)");
  }
  TlsFiles tls;
  tls.cert_file = cert_file;
  tls.key_file = key_file;
  tls.client_ca_file = client_ca_file;

  auto cert_pem = ReadPemFile("tls_cert", cert_file);
  if (!cert_pem.ok()) return cert_pem.status();
  tls.cert_pem = *std::move(cert_pem);
  std::vector<X509Ptr> chain = ReadCerts(tls.cert_pem);
  if (chain.empty()) {
    return PemError("tls_cert", cert_file, "holds no PEM certificate (BEGIN CERTIFICATE)");
  }
  WarnIfNotValidNow(chain[0].get(), cert_file);

  auto key_pem = ReadPemFile("tls_key", key_file);
  if (!key_pem.ok()) return key_pem.status();
  tls.key_pem = *std::move(key_pem);
  if (absl::StrContains(tls.key_pem, "ENCRYPTED")) {
    return PemError("tls_key", key_file,
                    "the private key is encrypted; give an unencrypted PEM key "
                    "(openssl pkey -in KEY -out PLAIN)");
  }
  BioPtr key_bio = MemBio(tls.key_pem);
  PkeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, NoPassphrase, nullptr));
  if (key == nullptr) {
    return PemError("tls_key", key_file,
                    absl::StrCat("holds no PEM private key (", OpenSslErrors(), ")"));
  }
  if (X509_check_private_key(chain[0].get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        "--tls_key=", key_file, " does not match the certificate in --tls_cert=", cert_file));
  }

  if (!client_ca_file.empty()) {
    auto ca_pem = ReadPemFile("tls_client_ca", client_ca_file);
    if (!ca_pem.ok()) return ca_pem.status();
    tls.client_ca_pem = *std::move(ca_pem);
    if (ReadCerts(tls.client_ca_pem).empty()) {
      return PemError("tls_client_ca", client_ca_file,
                      "holds no PEM CA certificate (BEGIN CERTIFICATE)");
    }
  }
  return tls;
}

absl::Status ConfigureServerSslContext(SSL_CTX* ctx, const TlsFiles& tls) {
  SSL_CTX_set_default_passwd_cb(ctx, NoPassphrase);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
    return absl::InternalError(absl::StrCat("TLS setup: ", OpenSslErrors()));
  }
  std::vector<X509Ptr> chain = ReadCerts(tls.cert_pem);
  if (chain.empty() || SSL_CTX_use_certificate(ctx, chain[0].get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_cert=", tls.cert_file, ": ", OpenSslErrors()));
  }
  SSL_CTX_clear_chain_certs(ctx);
  for (size_t i = 1; i < chain.size(); ++i) {
    if (SSL_CTX_add1_chain_cert(ctx, chain[i].get()) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls_cert=", tls.cert_file, ": chain: ", OpenSslErrors()));
    }
  }
  BioPtr key_bio = MemBio(tls.key_pem);
  PkeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, NoPassphrase, nullptr));
  if (key == nullptr || SSL_CTX_use_PrivateKey(ctx, key.get()) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_key=", tls.key_file, ": ", OpenSslErrors()));
  }
  if (tls.mtls()) {
    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    for (const X509Ptr& ca : ReadCerts(tls.client_ca_pem)) {
      if (X509_STORE_add_cert(store, ca.get()) != 1 || SSL_CTX_add_client_CA(ctx, ca.get()) != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("--tls_client_ca=", tls.client_ca_file, ": ", OpenSslErrors()));
      }
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    // Needed for session resumption with client certificates.
    static const unsigned char kSessionContext[] = "imagesearch-query";
    SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof(kSessionContext) - 1);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> LoadClientTlsFlags(
    absl::string_view flag, const std::string& ca_file, const std::string& cert_file,
    const std::string& key_file) {
  const std::string ca_flag = absl::StrCat(flag, "_ca"), cert_flag = absl::StrCat(flag, "_cert"),
                    key_flag = absl::StrCat(flag, "_key");
  if (ca_file.empty()) {
    if (!cert_file.empty() || !key_file.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", cert_flag, " and --", key_flag, " need --", ca_flag));
    }
    return grpc::InsecureChannelCredentials();
  }
  if (cert_file.empty() != key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", cert_flag, " and --", key_flag, " go together"));
  }
  grpc::SslCredentialsOptions ssl;
  ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPemFile(ca_flag, ca_file));
  if (ReadCerts(ssl.pem_root_certs).empty()) {
    return PemError(ca_flag, ca_file, "holds no PEM CA certificate (BEGIN CERTIFICATE)");
  }
  if (!cert_file.empty()) {
    ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPemFile(cert_flag, cert_file));
    if (ReadCerts(ssl.pem_cert_chain).empty()) {
      return PemError(cert_flag, cert_file, "holds no PEM certificate (BEGIN CERTIFICATE)");
    }
    ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPemFile(key_flag, key_file));
    BioPtr key_bio = MemBio(ssl.pem_private_key);
    PkeyPtr key(PEM_read_bio_PrivateKey(key_bio.get(), nullptr, NoPassphrase, nullptr));
    if (key == nullptr) {
      return PemError(key_flag, key_file,
                      absl::StrCat("holds no unencrypted PEM private key (", OpenSslErrors(), ")"));
    }
  }
  return grpc::SslCredentials(ssl);
}

namespace {

// The token's checks; the token without surrounding whitespace.
absl::StatusOr<absl::string_view> CheckedToken(absl::string_view text) {
  const absl::string_view token = absl::StripAsciiWhitespace(text);
  if (token.empty()) return absl::InvalidArgumentError("the token is empty");
  for (char c : token) {
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError(
          "the token must be one line of visible ASCII characters, without spaces");
    }
  }
  return token;
}

}  // namespace

absl::StatusOr<std::string> ReadBearerTokenFile(absl::string_view flag, const std::string& path) {
  auto text = ReadFileToString(path, 64 << 10);
  if (!text.ok()) {
    return absl::Status(
        text.status().code(),
        absl::StrCat("--", flag, "=", path, ": cannot read: ", text.status().message()));
  }
  auto token = CheckedToken(*text);
  if (!token.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, "=", path, ": ", token.status().message()));
  }
  return std::string(*token);
}

absl::StatusOr<BearerToken> BearerToken::FromFile(const std::string& path) {
  ASSIGN_OR_RETURN(const std::string token, ReadBearerTokenFile("auth_token_file", path));
  return FromString(token);
}

absl::StatusOr<BearerToken> BearerToken::FromString(absl::string_view text) {
  ASSIGN_OR_RETURN(const absl::string_view token, CheckedToken(text));
  if (token.size() < 16) {
    LogWarning("the bearer token has only ", token.size(),
               " characters; use a long random one (openssl rand -hex 32)");
  }
  BearerToken t;
  t.digest_ = Sha256(token);
  return t;
}

bool BearerToken::Accepts(absl::string_view authorization) const {
  constexpr absl::string_view kScheme = "bearer";
  bool ok = authorization.size() > kScheme.size() &&
            absl::EqualsIgnoreCase(authorization.substr(0, kScheme.size()), kScheme) &&
            (authorization[kScheme.size()] == ' ' || authorization[kScheme.size()] == '\t');
  const absl::string_view presented =
      ok ? absl::StripAsciiWhitespace(authorization.substr(kScheme.size())) : absl::string_view();
  // Hash whatever was presented, so that the time taken does not depend on
  // how much of it matches.
  const std::array<unsigned char, 32> digest = Sha256(presented);
  ok &= CRYPTO_memcmp(digest.data(), digest_.data(), digest.size()) == 0;
  return ok && !presented.empty();
}

absl::StatusOr<std::optional<TlsFiles>> LoadServerTlsFlags(const std::string& cert_file,
                                                           const std::string& key_file,
                                                           const std::string& client_ca_file) {
  if (cert_file.empty() && key_file.empty() && client_ca_file.empty()) return std::nullopt;
  if (cert_file.empty() || key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_cert and --tls_key go together",
                     client_ca_file.empty() ? "" : " (--tls_client_ca needs both)"));
  }
  absl::StatusOr<TlsFiles> loaded = LoadTlsFiles(cert_file, key_file, client_ca_file);
  if (!loaded.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("TLS: ", loaded.status().message()));
  }
  return std::optional<TlsFiles>(*std::move(loaded));
}

std::shared_ptr<grpc::ServerCredentials> GrpcServerCredentials(const TlsFiles* tls) {
  if (tls == nullptr) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions ssl(
      tls->mtls() ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                  : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  ssl.pem_key_cert_pairs.push_back({tls->key_pem, tls->cert_pem});
  ssl.pem_root_certs = tls->client_ca_pem;
  return grpc::SslServerCredentials(ssl);
}

absl::StatusOr<ServerSecurity> LoadServerSecurityFlags(const std::string& cert_file,
                                                       const std::string& key_file,
                                                       const std::string& client_ca_file,
                                                       const std::string& token_file) {
  ServerSecurity out;
  ASSIGN_OR_RETURN(out.tls, LoadServerTlsFlags(cert_file, key_file, client_ca_file));
  if (!token_file.empty()) {
    absl::StatusOr<BearerToken> token = BearerToken::FromFile(token_file);
    if (!token.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--auth_token_file: ", token.status().message()));
    }
    out.token = *std::move(token);
  }
  return out;
}

}  // namespace imagesearch
