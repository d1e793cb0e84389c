#include "services/indexer/ingest_service.h"

#include <signal.h>

#include <condition_variable>
#include <deque>
#include <iostream>
#include <iterator>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "libs/common/binary_main.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "libs/rpc/completion_threads.h"
#include "libs/rpc/health_reflection.h"
#include "libs/serving/filter_proto.h"
#include "services/query/connection_limits.h"

namespace imagesearch::indexer {
namespace {

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// Sets `version` (one root) or `shard_versions` (sharded) of a response.
template <typename Response>
void SetVersions(const IngestShards& core, const ShardVersions& versions, Response* response) {
  if (!core.sharded()) {
    auto it = versions.find(0);
    response->set_version(it == versions.end() ? 0 : it->second);
    return;
  }
  for (const auto& [shard, version] : versions) {
    (*response->mutable_shard_versions())[shard] = version;
  }
}

void FillStatus(const IngestStatus& s, v1::IngestStatusResponse* response) {
  response->set_pending_rows(s.pending_rows);
  response->set_pending_deletes(s.pending_deletes);
  response->set_last_published(s.last_published);
  response->set_current_version(s.current_version);
  response->set_segments(s.segments);
  response->set_live_rows(s.live_rows);
  response->set_merges_running(s.merges_running);
  response->set_merges_done(s.merges_done);
  response->set_last_error(s.last_error);
}

absl::Time Deadline(const grpc::ServerContext* context) {
  const auto d = context->deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::Now() + absl::Hours(1);
  return absl::FromChrono(d);
}

std::vector<IngestItem> ItemsOf(const v1::UpsertRequest& request) {
  std::vector<IngestItem> items;
  items.reserve(static_cast<size_t>(request.items_size()));
  for (const auto& it : request.items()) {
    IngestItem item;
    item.id = it.id();
    item.uri = it.uri();
    item.attributes_json = it.attributes_json();
    if (it.content_case() == v1::UpsertItem::kImage) {
      item.is_image = true;
      item.image = it.image();
    } else {
      item.vector.assign(it.vector().values().begin(), it.vector().values().end());
    }
    items.push_back(std::move(item));
  }
  return items;
}

std::vector<std::string> IdsOf(const v1::UpsertRequest& request) {
  std::vector<std::string> ids;
  ids.reserve(static_cast<size_t>(request.items_size()));
  for (const auto& it : request.items()) ids.push_back(it.id());
  return ids;
}

// `ids`: the request's items' ids, in order.
void FillUpsertResponse(const IngestShards& core, const std::vector<std::string>& ids,
                        const ShardedWriteOutcome& out, v1::UpsertResponse* response) {
  for (size_t i = 0; i < ids.size(); ++i) {
    const absl::Status& s = out.items[i];
    v1::ItemResult* r = response->add_results();
    r->set_id(ids[i]);
    r->set_code(static_cast<int32_t>(s.code()));
    r->set_error(std::string(s.message()));
    if (s.ok()) {
      response->set_accepted(response->accepted() + 1);
    } else {
      response->set_rejected(response->rejected() + 1);
    }
  }
  SetVersions(core, out.versions, response);
}

bool WaitOf(const v1::UpsertRequest& request) { return !request.has_wait() || request.wait(); }

// Requests of one UpsertStream accepted and not yet answered.
constexpr size_t kStreamWindow = 8;

}  // namespace

grpc::Status IngestServiceImpl::Upsert(grpc::ServerContext* context,
                                       const v1::UpsertRequest* request,
                                       v1::UpsertResponse* response) {
  if (grpc::Status a = Authenticate(*context); !a.ok()) return a;
  auto out = core_->Upsert(ItemsOf(*request), WaitOf(*request), Deadline(context));
  if (!out.ok()) return ToGrpc(out.status());
  FillUpsertResponse(*core_, IdsOf(*request), *out, response);
  return grpc::Status::OK;
}

grpc::Status IngestServiceImpl::UpsertStream(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::UpsertStreamResponse, v1::UpsertStreamRequest>* stream) {
  if (grpc::Status a = Authenticate(*context); !a.ok()) return a;
  // This thread reads and accepts requests in order; `answerer` waits for
  // each one's publish and writes its response, in the same order. The
  // window between them bounds what is accepted and not yet answered.
  struct Accepted {
    std::vector<std::string> ids;  // Not the request: its images are not held meanwhile.
    bool wait = true;
    ShardedWriteOutcome out;
  };
  std::mutex mu;
  std::condition_variable changed;
  std::deque<Accepted> window;
  bool reading_done = false;
  grpc::Status read_failed;    // A request refused as a whole; nothing after it is read.
  grpc::Status answer_failed;  // The client is gone; nothing more is answered.
  std::thread answerer([&] {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      changed.wait(lock, [&] { return !window.empty() || reading_done; });
      if (window.empty()) return;  // Reading is done and every accepted request answered.
      Accepted& next = window.front();
      lock.unlock();
      // A stream may outlive any one wait: without a deadline of its own, each
      // wait gets Upsert's (an hour).
      if (next.wait) {
        if (absl::Status waited = core_->WaitPublished(&next.out, Deadline(context));
            !waited.ok()) {
          // One root, and its publish failed (or the wait ran out): the batch
          // is answered with that error on each of its accepted items (not
          // acknowledged; they may be lost), as a sharded collection answers
          // a shard's failure, and the stream goes on.
          for (absl::Status& item : next.out.items) {
            if (item.ok()) item = waited;
          }
          next.out.versions.clear();
        }
      }
      v1::UpsertStreamResponse response;
      FillUpsertResponse(*core_, next.ids, next.out, response.mutable_upsert());
      const bool written = stream->Write(response);
      lock.lock();
      window.pop_front();
      changed.notify_all();
      if (!written) {  // The call is over (cancelled, past its deadline): Read fails too.
        answer_failed =
            grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading the answers");
        return;
      }
    }
  });
  v1::UpsertStreamRequest read;
  while (stream->Read(&read)) {
    const v1::UpsertRequest& request = read.upsert();
    {
      std::unique_lock<std::mutex> lock(mu);
      changed.wait(lock, [&] { return window.size() < kStreamWindow || !answer_failed.ok(); });
      if (!answer_failed.ok()) break;
    }
    // Accepted without waiting: the wait is the answerer's, so the next
    // request is read (and accepted, in order) meanwhile.
    auto out = core_->Upsert(ItemsOf(request), /*wait=*/false, Deadline(context));
    std::lock_guard<std::mutex> lock(mu);
    if (!out.ok()) {
      read_failed = ToGrpc(out.status());
      break;
    }
    window.push_back(Accepted{IdsOf(request), WaitOf(request), *std::move(out)});
    changed.notify_all();
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    reading_done = true;
    changed.notify_all();
  }
  answerer.join();  // The requests accepted before a failed one are answered first.
  if (!answer_failed.ok()) return answer_failed;
  if (!read_failed.ok()) return read_failed;
  if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
  return grpc::Status::OK;
}

grpc::Status IngestServiceImpl::Delete(grpc::ServerContext* context,
                                       const v1::DeleteRequest* request,
                                       v1::DeleteResponse* response) {
  if (grpc::Status a = Authenticate(*context); !a.ok()) return a;
  std::vector<std::string> ids(request->ids().begin(), request->ids().end());
  for (const auto& id : ids) {
    if (id.empty()) return ToGrpc(absl::InvalidArgumentError("an id to delete is empty"));
  }
  size_t matched = 0;
  if (request->has_filter()) {
    serving::Filter filter;
    serving::FilterFromProto(request->filter(), &filter);
    auto more = core_->IdsMatching(filter);
    if (!more.ok()) return ToGrpc(more.status());
    matched = more->size();
    ids.insert(ids.end(), std::make_move_iterator(more->begin()),
               std::make_move_iterator(more->end()));
  }
  const bool wait = !request->has_wait() || request->wait();
  auto v = core_->Delete(ids, wait, Deadline(context));
  if (!v.ok()) return ToGrpc(v.status());
  SetVersions(*core_, *v, response);
  response->set_accepted(static_cast<uint32_t>(ids.size()));
  response->set_matched(static_cast<uint32_t>(matched));
  return grpc::Status::OK;
}

grpc::Status IngestServiceImpl::Flush(grpc::ServerContext* context, const v1::FlushRequest*,
                                      v1::FlushResponse* response) {
  if (grpc::Status a = Authenticate(*context); !a.ok()) return a;
  auto v = core_->Flush(Deadline(context));
  if (!v.ok()) return ToGrpc(v.status());
  SetVersions(*core_, *v, response);
  return grpc::Status::OK;
}

grpc::Status IngestServiceImpl::Status(grpc::ServerContext* context, const v1::IngestStatusRequest*,
                                       v1::IngestStatusResponse* response) {
  if (grpc::Status a = Authenticate(*context); !a.ok()) return a;
  const ShardedIngestStatus s = core_->Status();
  FillStatus(s.total, response);
  if (core_->sharded()) {
    response->set_shard_count(core_->shard_count());
    for (const IngestStatus& shard : s.shards) FillStatus(shard, response->add_shards());
  }
  return grpc::Status::OK;
}

grpc::Status IngestServiceImpl::Authenticate(const grpc::ServerContext& context) const {
  if (token_ == nullptr) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  for (auto [it, end] = metadata.equal_range("authorization"); it != end; ++it) {
    if (token_->Accepts(absl::string_view(it->second.data(), it->second.size()))) {
      return grpc::Status::OK;
    }
  }
  return grpc::Status(
      grpc::StatusCode::UNAUTHENTICATED,
      "missing or invalid bearer token: send metadata 'authorization: Bearer <token>'");
}

int RunIngestServer(const ServeOptions& options) {
  // SIGTERM/SIGINT are waited for on this thread (sigwait), blocked in all.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  auto core = IngestShards::Start(options.ingest, options.shard_count, options.collection);
  if (!core.ok()) {
    LogError("imagesearch-indexer serve: ", core.status().ToString());
    return 1;
  }
  IngestServiceImpl service(core->get(),
                            options.security.token ? &*options.security.token : nullptr);
  grpc::ServerBuilder builder;
  // Health and reflection as the query service and the router serve them
  // (libs/rpc/health_reflection.h): Check names the service too, and
  // reflection answers v1 and v1alpha. Their calls are few; one thread.
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  queues.push_back(builder.AddCompletionQueue());
  rpc::CompletionThreads threads(std::move(queues), 1);
  rpc::HealthService health(&threads, {"imagesearch.v1.Ingest"});
  rpc::ReflectionService reflection(&threads, {"imagesearch.v1.Ingest", "grpc.health.v1.Health"});
  builder.RegisterService(health.service());
  for (grpc::Service* s : reflection.services()) builder.RegisterService(s);
  int port = 0;
  builder.AddListeningPort(
      absl::StrCat(options.host, ":", options.port),
      GrpcServerCredentials(options.security.tls ? &*options.security.tls : nullptr), &port);
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(256 << 20);
  ApplyConnectionLimits(&builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    LogError("imagesearch-indexer serve: cannot listen on ", options.host, ":", options.port);
    return 1;
  }
  health.Start();
  reflection.Start();
  health.SetServing(true);
  if (!options.port_file.empty()) {
    absl::Status s = WritePortFile(options.port_file, absl::StrCat("{\"grpc\": ", port, "}\n"));
    if (!s.ok()) {
      LogError("--port_file: ", s.ToString());
      return 1;
    }
  }
  std::cout << "listening on port " << port << std::endl;
  LogInfo(
      "imagesearch-indexer serve: ingesting into ", (*core)->Describe(), " (dim ", (*core)->dim(),
      "), gRPC on ", options.host, ":", port,
      options.security.tls ? (options.security.tls->mtls() ? " (mTLS)" : " (TLS)") : " (plaintext)",
      options.security.token ? ", bearer token required" : "");
  int sig = 0;
  sigwait(&signals, &sig);
  LogInfo("imagesearch-indexer serve: signal ", sig, ": stopping");
  health.Shutdown();  // NOT_SERVING, and Watch streams end.
  // Calls in flight finish (a waiting Upsert is answered once its batch is
  // published, or told it was not); pending writes not yet published are
  // published first by a final flush.
  auto flushed = (*core)->Flush(absl::Now() + absl::Seconds(20));
  if (!flushed.ok()) LogError("final flush: ", flushed.status().ToString());
  // Stopping the core first answers the calls still waiting for a publish
  // (UNAVAILABLE: not published, may be lost) within a second, so the
  // server's shutdown does not wait for a publish on a stalled volume.
  (void)(*core)->StopWithin(absl::ZeroDuration());
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  threads.Shutdown();  // After the server's: gRPC's order.
  // A background merge may run for a minute more (a fold of the big segment),
  // and a publish as long as a stalled volume stalls; the writes are
  // published (or their callers told otherwise) by now, so neither is waited
  // for beyond a second: the process ends as a crash would end them, and the
  // next start removes what they left.
  if (!(*core)->StopWithin(absl::Seconds(1))) {
    LogWarning("imagesearch-indexer serve: a merge or publish is still running; exiting without ",
               "waiting for it (the next start removes its temp files)");
    ExitWithoutCleanup(0);
  }
  core->reset();
  return 0;
}

}  // namespace imagesearch::indexer
