#include "libs/rpc/health_reflection.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace imagesearch::rpc {

namespace health = grpc::health::v1;

// One Watch stream: the service's status now, then each change, until the
// client goes or the server stops (gRPC's done notification).
class HealthService::WatchCall final : public CqTag {
 public:
  WatchCall(HealthService* owner, grpc::ServerCompletionQueue* queue)
      : owner_(owner), queue_(queue), writer_(&context_), done_(this) {
    context_.AsyncNotifyWhenDone(done_.GrpcTag());
  }

  void Request() {
    const bool ran = start_.Starting([&] {
      return owner_->threads_->IfRunning([&] {
        owner_->service_.RequestWatch(&context_, &request_, &writer_, queue_, queue_, GrpcTag());
      });
    });
    if (!ran) delete this;
  }

  // The request arrived (first), or a write or the Finish completed. The
  // call's done notification may come before, on another thread (with
  // --threads > 1): the operation pending keeps the call until both ran.
  void Proceed(bool ok) override {
    start_.AwaitStarted();
    if (!started_ && !ok) {  // The server is stopping; no done notification comes.
      delete this;
      return;
    }
    const bool first = !started_;
    started_ = true;
    if (first) owner_->AwaitWatch(queue_);
    bool gone = false;
    {
      std::lock_guard<std::mutex> lock(owner_->mu_);
      pending_ = false;
      gone = finished_;
      if (!gone) {
        if (first) owner_->watchers_.insert(this);
        if (ok) SendIfChangedLocked();
      }
    }
    if (gone) delete this;
  }

  // Writes the status if it changed since the last write; when the service
  // is closing and it has nothing more to say, ends the stream.
  // REQUIRES: owner_->mu_ held.
  void SendIfChangedLocked() {
    if (pending_ || finished_ || finishing_) return;
    const Status now = owner_->StatusOf(request_.service());
    if (now != sent_) {
      sent_ = now;
      response_.set_status(now);
      pending_ = start_.Starting([&] {
        return owner_->threads_->IfRunning([&] { writer_.Write(response_, GrpcTag()); });
      });
    } else if (owner_->closing_) {
      finishing_ = true;
      pending_ = start_.Starting([&] {
        return owner_->threads_->IfRunning([&] { writer_.Finish(grpc::Status::OK, GrpcTag()); });
      });
    }
  }

 private:
  // The call ended (cancelled by the client, finished, or the server
  // stopped).
  struct Done final : CqTag {
    explicit Done(WatchCall* c) : call(c) {}
    void Proceed(bool) override {
      call->start_.AwaitStarted();
      bool gone = false;
      {
        std::lock_guard<std::mutex> lock(call->owner_->mu_);
        call->finished_ = true;
        call->owner_->watchers_.erase(call);
        gone = !call->pending_;
      }
      if (gone) delete call;
    }
    WatchCall* const call;
  };

  HealthService* const owner_;
  grpc::ServerCompletionQueue* const queue_;
  grpc::ServerContext context_;
  health::HealthCheckRequest request_;
  health::HealthCheckResponse response_;
  grpc::ServerAsyncWriter<health::HealthCheckResponse> writer_;
  Done done_;
  StartLock start_;
  bool started_ = false;  // The request arrived (its thread only).
  // Guarded by owner_->mu_:
  bool pending_ = true;  // An operation (the request, a write, the Finish) is in flight.
  bool finishing_ = false;
  bool finished_ = false;
  Status sent_ = health::HealthCheckResponse::UNKNOWN;
};

HealthService::HealthService(CompletionThreads* threads, const std::vector<std::string>& services)
    : threads_(threads) {
  serving_[""] = false;
  for (const auto& s : services) serving_[s] = false;
  check_.request = [this](grpc::ServerContext* c, health::HealthCheckRequest* q,
                          grpc::ServerAsyncResponseWriter<health::HealthCheckResponse>* w,
                          grpc::ServerCompletionQueue* queue,
                          void* tag) { service_.RequestCheck(c, q, w, queue, queue, tag); };
  check_.answer = [this](const CallInfo&, const health::HealthCheckRequest& q,
                         std::function<void(absl::StatusOr<health::HealthCheckResponse>)> done) {
    Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      status = StatusOf(q.service());
    }
    if (status == health::HealthCheckResponse::SERVICE_UNKNOWN) {
      return done(absl::NotFoundError("unknown service"));
    }
    health::HealthCheckResponse r;
    r.set_status(status);
    done(std::move(r));
  };
}

HealthService::Status HealthService::StatusOf(const std::string& service) const {
  const auto it = serving_.find(service);
  if (it == serving_.end()) return health::HealthCheckResponse::SERVICE_UNKNOWN;
  return it->second ? health::HealthCheckResponse::SERVING
                    : health::HealthCheckResponse::NOT_SERVING;
}

void HealthService::AwaitWatch(grpc::ServerCompletionQueue* queue) {
  (new WatchCall(this, queue))->Request();
}

void HealthService::Start() {
  ServedCall<health::HealthCheckRequest, health::HealthCheckResponse>::AwaitOnEveryQueue(
      &check_, threads_, 1);
  for (size_t q = 0; q < threads_->size(); ++q) AwaitWatch(threads_->server_queue(q));
}

void HealthService::SetServing(bool serving) {
  std::lock_guard<std::mutex> lock(mu_);
  if (closing_) return;  // Shutdown is final, as in gRPC's own health service.
  for (auto& [name, s] : serving_) s = serving;
  for (WatchCall* w : watchers_) w->SendIfChangedLocked();
}

void HealthService::Shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  closing_ = true;
  for (auto& [name, s] : serving_) s = false;
  for (WatchCall* w : watchers_) w->SendIfChangedLocked();
}

namespace {

struct V1 {
  using Service = grpc::reflection::v1::ServerReflection::AsyncService;
  using Request = grpc::reflection::v1::ServerReflectionRequest;
  using Response = grpc::reflection::v1::ServerReflectionResponse;
};
struct V1Alpha {
  using Service = grpc::reflection::v1alpha::ServerReflection::AsyncService;
  using Request = grpc::reflection::v1alpha::ServerReflectionRequest;
  using Response = grpc::reflection::v1alpha::ServerReflectionResponse;
};

}  // namespace

// One ServerReflectionInfo stream: each request read is answered before the
// next is read; the stream ends when the client closes its side.
template <typename Proto>
class ReflectionService::Stream final : public CqTag {
 public:
  Stream(ReflectionService* owner, typename Proto::Service* service,
         grpc::ServerCompletionQueue* queue)
      : owner_(owner), service_(service), queue_(queue), stream_(&context_) {}

  void Await() {
    Op([&] {
      service_->RequestServerReflectionInfo(&context_, &stream_, queue_, queue_, GrpcTag());
    });
  }

  void Proceed(bool ok) override {
    start_.AwaitStarted();
    switch (state_) {
      case kRequested:
        if (!ok) break;
        (new Stream(owner_, service_, queue_))->Await();
        state_ = kReading;
        return Op([&] { stream_.Read(&request_, GrpcTag()); });
      case kReading:
        if (!ok) {  // The client closed its side.
          state_ = kFinishing;
          return Op([&] { stream_.Finish(grpc::Status::OK, GrpcTag()); });
        }
        Answer();
        state_ = kWriting;
        return Op([&] { stream_.Write(response_, GrpcTag()); });
      case kWriting:
        if (!ok) {
          state_ = kFinishing;
          return Op([&] { stream_.Finish(grpc::Status::CANCELLED, GrpcTag()); });
        }
        state_ = kReading;
        return Op([&] { stream_.Read(&request_, GrpcTag()); });
      case kFinishing:
        break;
    }
    delete this;
  }

 private:
  using Request = typename Proto::Request;
  using Pool = google::protobuf::DescriptorPool;

  // Starts `op` on the stream, or ends here if the queues are stopping.
  template <typename F>
  void Op(F op) {
    if (!start_.Starting([&] { return owner_->threads_->IfRunning(op); })) delete this;
  }

  void Answer() {
    response_.Clear();
    response_.set_valid_host(request_.host());
    *response_.mutable_original_request() = request_;
    const Pool* pool = Pool::generated_pool();
    switch (request_.message_request_case()) {
      case Request::kListServices:
        for (const auto& name : owner_->names_) {
          response_.mutable_list_services_response()->add_service()->set_name(name);
        }
        return;
      case Request::kFileByFilename:
        return SendFile(pool->FindFileByName(request_.file_by_filename()), "File not found.");
      case Request::kFileContainingSymbol:
        return SendFile(pool->FindFileContainingSymbol(request_.file_containing_symbol()),
                        "Symbol not found.");
      case Request::kFileContainingExtension: {
        const auto& ext = request_.file_containing_extension();
        const auto* type = pool->FindMessageTypeByName(ext.containing_type());
        if (type == nullptr) return Error(grpc::StatusCode::NOT_FOUND, "Type not found.");
        const auto* field = pool->FindExtensionByNumber(type, ext.extension_number());
        if (field == nullptr) return Error(grpc::StatusCode::NOT_FOUND, "Extension not found.");
        return SendFile(field->file(), "Extension not found.");
      }
      case Request::kAllExtensionNumbersOfType: {
        const auto* type = pool->FindMessageTypeByName(request_.all_extension_numbers_of_type());
        if (type == nullptr) return Error(grpc::StatusCode::NOT_FOUND, "Type not found.");
        std::vector<const google::protobuf::FieldDescriptor*> fields;
        pool->FindAllExtensions(type, &fields);
        auto* out = response_.mutable_all_extension_numbers_response();
        out->set_base_type_name(type->full_name());
        for (const auto* f : fields) out->add_extension_number(f->number());
        return;
      }
      default:
        return Error(grpc::StatusCode::UNIMPLEMENTED, "The request is not supported.");
    }
  }

  void Error(grpc::StatusCode code, const std::string& message) {
    response_.mutable_error_response()->set_error_code(static_cast<int>(code));
    response_.mutable_error_response()->set_error_message(message);
  }

  // `file` and the files it imports that this stream has not sent yet (the
  // file asked for always).
  void SendFile(const google::protobuf::FileDescriptor* file, const char* not_found) {
    if (file == nullptr) return Error(grpc::StatusCode::NOT_FOUND, not_found);
    auto* out = response_.mutable_file_descriptor_response();
    std::vector<const google::protobuf::FileDescriptor*> todo = {file};
    bool first = true;
    while (!todo.empty()) {
      const auto* f = todo.back();
      todo.pop_back();
      if (!sent_.insert(f->name()).second && !first) continue;
      first = false;
      google::protobuf::FileDescriptorProto proto;
      f->CopyTo(&proto);
      out->add_file_descriptor_proto(proto.SerializeAsString());
      for (int i = 0; i < f->dependency_count(); ++i) todo.push_back(f->dependency(i));
    }
  }

  enum State { kRequested, kReading, kWriting, kFinishing };
  StartLock start_;
  ReflectionService* const owner_;
  typename Proto::Service* const service_;
  grpc::ServerCompletionQueue* const queue_;
  grpc::ServerContext context_;
  grpc::ServerAsyncReaderWriter<typename Proto::Response, Request> stream_;
  Request request_;
  typename Proto::Response response_;
  State state_ = kRequested;
  std::set<std::string> sent_;  // Files sent on this stream.
};

ReflectionService::ReflectionService(CompletionThreads* threads, std::vector<std::string> services)
    : threads_(threads), names_(std::move(services)) {
  names_.push_back("grpc.reflection.v1.ServerReflection");
  names_.push_back("grpc.reflection.v1alpha.ServerReflection");
}

void ReflectionService::Start() {
  for (size_t q = 0; q < threads_->size(); ++q) {
    (new Stream<V1>(this, &v1_, threads_->server_queue(q)))->Await();
    (new Stream<V1Alpha>(this, &v1alpha_, threads_->server_queue(q)))->Await();
  }
}

}  // namespace imagesearch::rpc
