#include "services/query/http_frontend.h"

#include <httplib.h>

#include <cmath>
#include <future>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "libs/common/file_util.h"
#include "libs/common/log.h"
#include "nlohmann/json.hpp"
#include "services/query/web_page.h"

namespace imagesearch {
namespace {

using json = nlohmann::json;
using serving::Query;

constexpr char kJson[] = "application/json";

void SendError(httplib::Response& res, const absl::Status& s, int http_status = 0) {
  res.status = http_status != 0 ? http_status : HttpStatusOf(s.code());
  json body = {
      {"error",
       {{"code", absl::StatusCodeToString(s.code())}, {"message", std::string(s.message())}}}};
  // Messages may quote request text cut at a byte limit (half a UTF-8
  // character); dump() would throw on that and turn the answer into a 500.
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), kJson);
}

// "image/png; q=1" -> "image/png".
std::string MediaType(const httplib::Request& req) {
  std::string type = req.get_header_value("Content-Type");
  type = type.substr(0, type.find(';'));
  return absl::AsciiStrToLower(absl::StripAsciiWhitespace(type));
}

absl::StatusOr<uint32_t> ParseUint32(absl::string_view name, absl::string_view text) {
  uint32_t v = 0;
  if (!absl::SimpleAtoi(text, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must be a non-negative integer, got '", text, "'"));
  }
  return v;
}

// Query parameters: top_k, ef, include_self and timeout_ms.
absl::Status ApplyParams(const httplib::Request& req, Query* q, absl::Duration* timeout) {
  for (const auto& [key, value] : req.params) {
    if (key == "top_k" || key == "ef" || key == "timeout_ms") {
      auto v = ParseUint32(key, value);
      if (!v.ok()) return v.status();
      if (key == "top_k") q->params.top_k = *v;
      if (key == "ef") q->params.ef = *v;
      if (key == "timeout_ms") *timeout = absl::Milliseconds(*v);
    } else if (key == "dedup") {
      float d = 0;
      if (!absl::SimpleAtof(value, &d)) {
        return absl::InvalidArgumentError(
            absl::StrCat("dedup must be a number from 0 to 1, got '", value.substr(0, 32), "'"));
      }
      q->params.dedup = d;
    } else if (key == "include_self") {
      if (value != "true" && value != "false") {
        return absl::InvalidArgumentError(
            absl::StrCat("include_self must be true or false, got '", value, "'"));
      }
      q->include_self = value == "true";
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown query parameter '", key.substr(0, 64),
          "'; known: top_k, ef, include_self, dedup, timeout_ms"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> JsonUint32(const json& j, const char* name) {
  if (!j.is_number_unsigned() || j.get<uint64_t>() > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " must be a non-negative 32-bit integer, got ", j.dump()));
  }
  return static_cast<uint32_t>(j.get<uint64_t>());
}

absl::StatusOr<serving::FilterValue> FilterValueFromJson(const json& v, absl::string_view what) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number_integer() &&
      !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t{INT64_MAX})) {
    return v.get<int64_t>();
  }
  if (v.is_number()) return v.get<double>();
  return absl::InvalidArgumentError(absl::StrCat(what, " must be a string, number or boolean, got ",
                                                 v.dump().substr(0, 40)));
}

// {"must"|"should"|"must_not": [{"field", "match"|"in"|"range"|"has_id"}]},
// as the proto's Filter with plain JSON scalars for values.
absl::Status FilterFromJson(const json& j, serving::Filter* out) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError("filter must be an object with must, should and must_not lists");
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    std::vector<serving::Condition>* list = it.key() == "must"       ? &out->must
                                            : it.key() == "should"   ? &out->should
                                            : it.key() == "must_not" ? &out->must_not
                                                                     : nullptr;
    if (list == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown filter key '", it.key().substr(0, 64),
                                                     "'; known: must, should, must_not"));
    }
    if (!it->is_array()) return absl::InvalidArgumentError(absl::StrCat("filter ", it.key(), " must be a list"));
    for (const json& c : *it) {
      if (!c.is_object()) return absl::InvalidArgumentError("a filter condition must be an object");
      serving::Condition x;
      int tests = 0;
      for (auto f = c.begin(); f != c.end(); ++f) {
        const std::string& key = f.key();
        const json& v = f.value();
        if (key == "field") {
          if (!v.is_string()) return absl::InvalidArgumentError("filter field must be a string");
          x.field = v.get<std::string>();
        } else if (key == "match") {
          ++tests;
          x.kind = serving::Condition::Kind::kMatch;
          auto value = FilterValueFromJson(v, "filter match value");
          if (!value.ok()) return value.status();
          x.values = {*std::move(value)};
        } else if (key == "in") {
          ++tests;
          x.kind = serving::Condition::Kind::kIn;
          if (!v.is_array()) return absl::InvalidArgumentError("filter in must be a list of values");
          for (const json& e : v) {
            auto value = FilterValueFromJson(e, "filter in value");
            if (!value.ok()) return value.status();
            x.values.push_back(*std::move(value));
          }
        } else if (key == "range") {
          ++tests;
          x.kind = serving::Condition::Kind::kRange;
          if (!v.is_object()) return absl::InvalidArgumentError("filter range must be an object");
          for (auto b = v.begin(); b != v.end(); ++b) {
            auto value = FilterValueFromJson(b.value(), absl::StrCat("filter range ", b.key()));
            if (!value.ok()) return value.status();
            if (b.key() == "gte") {
              x.gte = *value;
            } else if (b.key() == "gt") {
              x.gt = *value;
            } else if (b.key() == "lte") {
              x.lte = *value;
            } else if (b.key() == "lt") {
              x.lt = *value;
            } else {
              return absl::InvalidArgumentError(absl::StrCat(
                  "unknown range bound '", b.key().substr(0, 32), "'; known: gte, gt, lte, lt"));
            }
          }
        } else if (key == "has_id") {
          ++tests;
          x.kind = serving::Condition::Kind::kHasId;
          if (!v.is_array()) return absl::InvalidArgumentError("filter has_id must be a list of ids");
          for (const json& e : v) {
            if (!e.is_string()) return absl::InvalidArgumentError("filter has_id ids must be strings");
            x.ids.push_back(e.get<std::string>());
          }
        } else {
          return absl::InvalidArgumentError(absl::StrCat(
              "unknown filter condition key '", key.substr(0, 64),
              "'; known: field, match, in, range, has_id"));
        }
      }
      if (tests != 1) {
        return absl::InvalidArgumentError(absl::StrCat(
            "a filter condition needs exactly one of match, in, range or has_id; the one on '",
            x.field.substr(0, 64), "' has ", tests));
      }
      list->push_back(std::move(x));
    }
  }
  return absl::OkStatus();
}

// Parses a JSON body into `q`; the views in `q` point into `vector`, `bytes`
// and `filter`, which the caller keeps alive.
absl::Status QueryFromJson(const std::string& body, Query* q, std::vector<float>* vector,
                           std::string* bytes, serving::Filter* filter) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("request body is not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("request body must be a JSON object");
  int kinds = 0;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "text" || key == "id" || key == "image_b64") {
      ++kinds;
      if (!v.is_string()) return absl::InvalidArgumentError(absl::StrCat(key, " must be a string"));
      *bytes = v.get<std::string>();
      if (key == "image_b64") {
        std::string decoded;
        if (!absl::Base64Unescape(*bytes, &decoded)) {
          return absl::InvalidArgumentError("image_b64 is not valid base64");
        }
        *bytes = std::move(decoded);
      }
      q->kind = key == "text" ? Query::Kind::kText
                : key == "id" ? Query::Kind::kId
                              : Query::Kind::kImage;
      if (q->kind == Query::Kind::kId) {
        q->id = *bytes;
      } else {
        q->data = *bytes;
      }
    } else if (key == "vector") {
      ++kinds;
      if (!v.is_array()) return absl::InvalidArgumentError("vector must be an array of numbers");
      vector->reserve(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        if (!v[i].is_number()) {
          return absl::InvalidArgumentError(absl::StrCat("vector[", i, "] is not a number"));
        }
        vector->push_back(v[i].get<float>());
      }
      q->kind = Query::Kind::kVector;
      q->vector = *vector;
    } else if (key == "top_k" || key == "ef") {
      auto n = JsonUint32(v, key.c_str());
      if (!n.ok()) return n.status();
      (key == "top_k" ? q->params.top_k : q->params.ef) = *n;
    } else if (key == "include_self") {
      if (!v.is_boolean()) return absl::InvalidArgumentError("include_self must be true or false");
      q->include_self = v.get<bool>();
    } else if (key == "dedup") {
      if (!v.is_number()) return absl::InvalidArgumentError("dedup must be a number from 0 to 1");
      q->params.dedup = v.get<float>();
    } else if (key == "filter") {
      if (absl::Status s = FilterFromJson(v, filter); !s.ok()) return s;
      q->filter = filter;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown field '", key.substr(0, 64),
                       "'; known: text, vector, id, image_b64, top_k, ef, include_self, filter, dedup"));
    }
  }
  if (kinds > 1) {
    return absl::InvalidArgumentError("set only one of text, vector, id or image_b64");
  }
  return absl::OkStatus();
}

json HitsJson(const serving::SearchResult& r) {
  json hits = json::array();
  for (const auto& h : r.hits) {
    json attributes = h.attributes_json.empty()
                          ? json::object()
                          : json::parse(h.attributes_json, nullptr, /*allow_exceptions=*/false);
    if (attributes.is_discarded()) attributes = nullptr;
    hits.push_back({{"id", h.id},
                    {"score", h.score},
                    {"distance", h.distance},
                    {"uri", h.uri},
                    {"attributes", std::move(attributes)}});
  }
  return {{"hits", std::move(hits)}, {"snapshot_version", r.snapshot_version},
          {"collapsed", r.collapsed}};
}

json FieldsJson(const snapshot::AttributeTable* attrs) {
  json fields = json::array();
  if (attrs != nullptr) {
    for (const auto& f : attrs->fields()) {
      fields.push_back({{"name", f.name}, {"type", std::string(snapshot::FieldTypeName(f.type))}});
    }
  }
  return fields;
}

// The same fields, under the same names, as gRPC GetInfo.
json InfoJson(const serving::ServingState& state) {
  const auto& m = state.snapshot->manifest();
  return {{"snapshot_version", m.version},
          {"model",
           {{"name", m.model.name},
            {"version", m.model.version},
            {"sha256", m.model.sha256},
            {"embed_dim", m.dim},
            {"image_size", m.model.image_size},
            {"has_text", m.model.has_text},
            {"loaded", state.embedder != nullptr}}},
          {"dim", m.dim},
          {"metric", std::string(index::MetricName(m.metric))},
          {"vector_count", m.count},
          {"hnsw",
           {{"m", m.hnsw_m}, {"ef_construction", m.hnsw_ef_construction},
            {"default_ef", m.default_ef}}},
          {"created_at", m.created_at},
          {"base_version", m.base_version},
          {"max_top_k", serving::kMaxTopK},
          {"has_thumbnails", state.snapshot->thumbs() != nullptr},
          {"fields", FieldsJson(state.snapshot->attributes())}};
}

serving::CallContext HttpContext(absl::Duration timeout) {
  serving::CallContext context;
  context.front = "http";
  context.deadline = absl::Now() + timeout;
  return context;
}

// The methods whose body httplib reads before routing (detail::expect_content).
bool ReadsBody(const httplib::Request& req) {
  return req.method == "POST" || req.method == "PUT" || req.method == "PATCH" ||
         req.method == "DELETE" || req.method == "PRI";
}

// Open without a token: the orchestrator's health check (SageMaker, k8s).
bool IsPing(const httplib::Request& req) {
  return (req.method == "GET" || req.method == "HEAD") && req.path == "/ping";
}

absl::Status Unauthenticated() {
  return absl::UnauthenticatedError(
      "missing or invalid bearer token: send the header 'Authorization: Bearer <token>'");
}

bool IsImageType(const std::string& type) {
  return type == "image/jpeg" || type == "image/png" || type == "image/webp" ||
         type == "application/x-image";
}

}  // namespace

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kFailedPrecondition:
      return 412;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;  // Client closed request (nginx's convention).
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

HttpFrontend::HttpFrontend(serving::QueryCore* core, serving::Metrics* metrics,
                           HttpFrontendOptions options)
    : core_(core),
      metrics_(metrics),
      options_(std::move(options)) {
  if (options_.tls != nullptr) {
    // Same settings as below; only the connections are TLS. The context is
    // set up here, synchronously; Start() reports a failure.
    server_ = std::make_unique<httplib::SSLServer>([this](SSL_CTX& ctx) {
      absl::Status s = ConfigureServerSslContext(&ctx, *options_.tls);
      if (!s.ok()) tls_error_ = std::string(s.message());
      return s.ok();
    });
  } else {
    server_ = std::make_unique<httplib::Server>();
  }
  const int threads = std::max(1, options_.threads);
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // httplib writes headers and body separately; without TCP_NODELAY, Nagle holds
  // the body until the client's delayed ACK (about 40 ms per answer).
  server_->set_tcp_nodelay(true);
  // Refusals that never reach the core are still counted as requests.
  auto refuse = [this](httplib::Response& res, const absl::Status& s, int http_status = 0) {
    SendError(res, s, http_status);
    metrics_->RecordRequest("http", "Search", s.code(), absl::ZeroDuration());
  };

  // Bodies over the limit. A client that sends "Expect: 100-continue" (curl
  // does for large bodies) gets the 413 before it sends a byte of the body.
  // Otherwise httplib checks Content-Length before reading the body and
  // then discards the body in small pieces, never holding it, and answers
  // 413 on a connection that stays usable. (Answering before the body has
  // been read would leave the body in the stream: httplib 0.11 keeps the
  // connection open and would parse it as further requests.)
  server_->set_payload_max_length(options_.max_body_bytes);
  auto too_large = [this](const httplib::Request& req) {
    const std::string length = req.get_header_value("Content-Length").substr(0, 20);
    return absl::ResourceExhaustedError(
        length.empty()
            ? absl::StrCat("request body exceeds the limit of ", options_.max_body_bytes, " bytes")
            : absl::StrCat("request body is ", length, " bytes; the limit is ",
                           options_.max_body_bytes));
  };
  // The bearer token (options_.token): every request but /ping. A request
  // without a body is refused here, before routing. One with a body is read
  // first (refusing it unread would leave the body in the stream, as above),
  // and refused by its handler, or by the error handler for unknown routes.
  auto authorized = [this](const httplib::Request& req) {
    return options_.token == nullptr || IsPing(req) ||
           options_.token->Accepts(req.get_header_value("Authorization"));
  };
  auto unauthorized = [](httplib::Response& res) {
    SendError(res, Unauthenticated(), 401);
    res.set_header("WWW-Authenticate", "Bearer realm=\"imagesearch\"");
  };
  if (options_.token != nullptr) {
    server_->set_pre_routing_handler(
        [authorized, unauthorized](const httplib::Request& req, httplib::Response& res) {
          if (ReadsBody(req) || authorized(req)) return httplib::Server::HandlerResponse::Unhandled;
          unauthorized(res);
          return httplib::Server::HandlerResponse::Handled;
        });
  }

  server_->set_expect_100_continue_handler(
      [this, refuse, too_large, authorized, unauthorized](const httplib::Request& req,
                                                          httplib::Response& res) {
        if (!authorized(req)) {
          // Before the client sends the body.
          unauthorized(res);
          metrics_->RecordRequest("http", "Search", absl::StatusCode::kUnauthenticated,
                                  absl::ZeroDuration());
          res.set_header("Content-Length", std::to_string(res.body.size()));
          return 401;
        }
        uint64_t length = 0;
        if (absl::SimpleAtoi(req.get_header_value("Content-Length"), &length) &&
            length > options_.max_body_bytes) {
          refuse(res, too_large(req), 413);
          // This early answer skips httplib's usual content headers.
          res.set_header("Content-Length", std::to_string(res.body.size()));
          return 413;
        }
        return 100;
      });

  server_->set_error_handler(httplib::Server::HandlerWithResponse(
      [refuse, too_large, authorized, unauthorized](const httplib::Request& req,
                                                    httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        if (res.status == 404 && !authorized(req)) {
          unauthorized(res);
        } else if (res.status == 404) {
          SendError(res, absl::NotFoundError(absl::StrCat("no route ", req.method, " ", req.path,
                                                          "; routes: GET /, GET /ping, GET /info, "
                                                          "POST /invocations, GET /thumbs/{id}, "
                                                          "GET /metrics")));
        } else if (res.status == 413) {
          refuse(res, too_large(req), 413);
        } else {
          SendError(res, absl::InvalidArgumentError(absl::StrCat("HTTP error ", res.status)),
                    res.status);
        }
        return httplib::Server::HandlerResponse::Handled;
      }));

  server_->Get("/ping", [this](const httplib::Request&, httplib::Response& res) {
    res.status = core_->Serving() ? 200 : 503;
  });

  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_->Serialize(), "text/plain; version=0.0.4; charset=utf-8");
  });

  // The search page. Its policy keeps it to this origin: no external fetches.
  server_->Get("/", [](const httplib::Request&, httplib::Response& res) {
    const absl::string_view page = WebPageHtml();
    res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_header("Content-Security-Policy",
                   "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                   "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
                   "form-action 'none'; frame-ancestors 'none'");
  });

  server_->Get("/info", [this](const httplib::Request&, httplib::Response& res) {
    auto state = core_->Info(HttpContext(options_.timeout));
    if (!state.ok()) return SendError(res, state.status());
    res.set_content(InfoJson(**state).dump(), kJson);
  });

  // Thumbnails come only from the live snapshot's thumbs.bin, looked up by
  // id: nothing in the request names a file.
  server_->Get(R"(/thumbs/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
    auto thumb = core_->Thumbnail(req.matches[1].str(), HttpContext(options_.timeout));
    if (!thumb.ok()) return SendError(res, thumb.status());
    // Content-addressed: the same picture keeps its ETag across versions.
    const std::string etag = absl::StrCat("\"", Xxh3Hex(thumb->bytes), "\"");
    res.set_header("ETag", etag);
    res.set_header("Cache-Control", "public, max-age=300");
    res.set_header("X-Content-Type-Options", "nosniff");
    if (req.get_header_value("If-None-Match") == etag) {
      res.status = 304;
      return;
    }
    res.set_content(thumb->bytes.data(), thumb->bytes.size(), thumb->media_type.c_str());
  });

  server_->Get("/invocations", [](const httplib::Request&, httplib::Response& res) {
    SendError(res, absl::UnimplementedError("use POST /invocations"), 405);
  });

  server_->Post(
      "/invocations",
      [this, refuse, authorized, unauthorized](const httplib::Request& req,
                                               httplib::Response& res) {
        if (!authorized(req)) {
          unauthorized(res);
          metrics_->RecordRequest("http", "Search", absl::StatusCode::kUnauthenticated,
                                  absl::ZeroDuration());
          return;
        }
        Query q;
        absl::Duration timeout = options_.timeout;
        std::vector<float> vector;
        std::string bytes;
        serving::Filter filter;
        if (absl::Status s = ApplyParams(req, &q, &timeout); !s.ok()) return refuse(res, s);
        const std::string type = MediaType(req);
        if (IsImageType(type)) {
          q.kind = Query::Kind::kImage;
          q.data = req.body;
        } else if (type == kJson) {
          if (absl::Status s = QueryFromJson(req.body, &q, &vector, &bytes, &filter); !s.ok()) {
            return refuse(res, s);
          }
        } else {
          return refuse(res,
                        absl::InvalidArgumentError(absl::StrCat(
                            "Content-Type '", type.substr(0, 64),
                            "' is not supported; send image/jpeg, image/png, image/webp or "
                            "application/json")),
                        415);
        }
        const serving::CallContext context = HttpContext(timeout);
        std::promise<absl::StatusOr<serving::SearchResult>> answer;
        core_->Search(q, context, [&answer](absl::StatusOr<serving::SearchResult> r) {
          answer.set_value(std::move(r));
        });
        absl::StatusOr<serving::SearchResult> r = answer.get_future().get();
        if (!r.ok()) return SendError(res, r.status());
        // Ids and URIs are bytes from the snapshot, not necessarily UTF-8.
        res.set_content(HitsJson(*r).dump(-1, ' ', false, json::error_handler_t::replace), kJson);
      });
}

HttpFrontend::~HttpFrontend() { Stop(); }

absl::Status HttpFrontend::Start() {
  if (!server_->is_valid()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot set up HTTPS: ", tls_error_));
  }
  if (!server_->bind_to_port(options_.host, options_.port)) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for HTTP on ", options_.host, ":", options_.port));
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return absl::OkStatus();
}

void HttpFrontend::Stop() {
  if (!thread_.joinable()) return;
  server_->stop();
  thread_.join();
}

}  // namespace imagesearch
