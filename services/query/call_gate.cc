#include "services/query/call_gate.h"

#include <utility>
#include <vector>

#include "absl/time/time.h"

namespace imagesearch {

absl::Status CallGate::Authenticate(absl::string_view front, absl::string_view method,
                                    absl::Span<const absl::string_view> authorization) const {
  if (token_ == nullptr) return absl::OkStatus();
  for (absl::string_view value : authorization) {
    if (token_->Accepts(value)) return absl::OkStatus();
  }
  return Refuse(
      front, method,
      absl::UnauthenticatedError(
          front == "grpc" ? "missing or invalid bearer token: send metadata 'authorization: Bearer "
                            "<token>'"
                          : "missing or invalid bearer token: send the header 'Authorization: "
                            "Bearer <token>'"));
}

absl::Status CallGate::AuthenticateGrpc(const grpc::ServerContextBase& context,
                                        absl::string_view method) const {
  if (token_ == nullptr) return absl::OkStatus();
  // Metadata keys arrive lower-case; a call may repeat a key.
  std::vector<absl::string_view> authorization;
  const auto& metadata = context.client_metadata();
  for (auto [it, end] = metadata.equal_range("authorization"); it != end; ++it) {
    authorization.emplace_back(it->second.data(), it->second.size());
  }
  return Authenticate("grpc", method, authorization);
}

absl::Status CallGate::Refuse(absl::string_view front, absl::string_view method,
                              absl::Status status) const {
  if (metrics_ != nullptr) {
    metrics_->RecordRequest(front, method, status.code(), absl::ZeroDuration());
  }
  return status;
}

}  // namespace imagesearch
