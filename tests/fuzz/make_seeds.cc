// Writes the generated seed corpora of tests/fuzz/corpus: snapshot (real
// tiny snapshots in the split format of snapshot_fuzzer.cc), query_proto
// (serialized SearchRequests), query_json (/invocations bodies) and
// tokenizer (option byte + text). Usage: fuzz_make_seeds <corpus dir>.
// (Image seeds: make_seeds.py.)
#include <sys/stat.h>

#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "google/protobuf/util/json_util.h"
#include "imagesearch/v1/imagesearch.pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

namespace snapshot = imagesearch::snapshot;
namespace v1 = imagesearch::v1;
using imagesearch::fuzz::kFileSeparator;

std::string Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void Write(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
  if (!out.good()) {
    std::cerr << "cannot write " << path << "\n";
    std::exit(1);
  }
}

// A published version's one segment, concatenated in SnapshotFileOrder():
// its manifest is a format-1 manifest, which opens as a version of one
// segment (the layout versions had before segments).
std::string SplitSnapshot(snapshot::SyntheticCorpus c) {
  const std::string root = snapshot::TempSnapshotRoot("fuzzseed");
  auto v = snapshot::PublishSnapshot(root, c.WithGraph());
  if (!v.ok()) {
    std::cerr << "publish: " << v.status() << "\n";
    std::exit(1);
  }
  const std::string dir = snapshot::FirstSegmentDir(root, *v);
  std::string out;
  const auto& names = imagesearch::fuzz::SnapshotFileOrder();
  size_t last = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    struct stat st;
    if (::stat((dir + "/" + names[i]).c_str(), &st) == 0) last = i;
  }
  for (size_t i = 0; i <= last; ++i) {
    if (i > 0) out += kFileSeparator;
    out += Read(dir + "/" + names[i]);
  }
  return out;
}

void SnapshotSeeds(const std::string& dir) {
  // Tiny: 12 rows, dim 4, L2, no optional files.
  auto tiny = snapshot::MakeSyntheticCorpus(12, 4, imagesearch::index::Metric::kL2, "r", 3, 3);
  tiny.input.hnsw.m = 4;
  const std::string t = SplitSnapshot(std::move(tiny));
  // Full: 24 rows, dim 8, cosine, thumbs.bin, attrs.bin and graph.f16.
  auto full = imagesearch::fuzz::QueryCorpus();
  full.input.hnsw.m = 4;
  full.input.count = 24;
  full.input.ids.resize(24);
  full.input.attributes.resize(24);
  full.input.thumbnails.resize(24);
  full.input.half_vectors = true;  // graph.f16, last in the split format.
  const std::string f = SplitSnapshot(std::move(full));
  // One row, inner product.
  auto one = snapshot::MakeSyntheticCorpus(1, 3, imagesearch::index::Metric::kInnerProduct, "x");
  const std::string o = SplitSnapshot(std::move(one));
  Write(dir + "/tiny_sizes", std::string(1, '\0') + t);
  Write(dir + "/tiny_fixup", std::string(1, '\1') + t);
  Write(dir + "/full_checksums", std::string(1, '\2') + f);
  Write(dir + "/full_fixup", std::string(1, '\1') + f);
  Write(dir + "/one_row", std::string(1, '\3') + o);
}

// The query seeds, as SearchRequests; written as protobuf (query_proto) and
// as proto3 JSON (query_json, what HTTP /invocations takes).
std::vector<std::pair<std::string, v1::SearchRequest>> QuerySeeds() {
  std::vector<std::pair<std::string, v1::SearchRequest>> seeds;
  auto add = [&](const std::string& name) -> v1::SearchRequest& {
    seeds.emplace_back(name, v1::SearchRequest());
    return seeds.back().second;
  };
  {
    auto& r = add("vector");
    for (int i = 0; i < imagesearch::fuzz::kQueryDim; ++i) r.mutable_vector()->add_values(0.1f * i);
    r.set_top_k(5);
  }
  {
    auto& r = add("vector_filter_dedup");
    for (int i = 0; i < imagesearch::fuzz::kQueryDim; ++i)
      r.mutable_vector()->add_values(1 - 0.1f * i);
    r.set_top_k(20);
    r.set_ef(40);
    r.set_dedup(0.95f);
    auto* c = r.mutable_filter()->add_must();
    c->set_field("tag");
    c->mutable_match()->set_keyword("red");
    auto* y = r.mutable_filter()->add_should();
    y->set_field("year");
    y->mutable_range()->mutable_gte()->set_integer(2003);
    y->mutable_range()->mutable_lt()->set_integer(2006);
    auto* n = r.mutable_filter()->add_must_not();
    n->mutable_has_id()->add_ids("item4");
  }
  {
    auto& r = add("id_include_self");
    r.set_id("item3");
    r.set_include_self(true);
    auto* c = r.mutable_filter()->add_must();
    c->set_field("when");
    c->mutable_range()->mutable_gt()->set_timestamp("2023-11-20T00:00:00Z");
    auto* p = r.mutable_filter()->add_should();
    p->set_field("price");
    p->mutable_range()->mutable_lte()->set_number(7.5);
    auto* s = r.mutable_filter()->add_should();
    s->set_field("safe");
    s->mutable_match()->set_boolean(true);
  }
  {
    auto& r = add("id_in");
    r.set_id("item10");
    auto* c = r.mutable_filter()->add_must();
    c->set_field("year");
    c->mutable_in()->add_values()->set_integer(2001);
    c->mutable_in()->add_values()->set_integer(2002);
    auto* k = r.mutable_filter()->add_must();
    k->set_field("tag");
    k->mutable_in()->add_values()->set_keyword("blue");
    k->mutable_in()->add_values()->set_keyword("ünï");
  }
  {
    auto& r = add("text");
    r.set_text("a photo of a cat");
  }
  {
    auto& r = add("image");
    r.set_image(std::string("\x89PNG\r\n\x1a\n", 8));
  }
  {
    auto& r = add("bad_filter");
    r.set_id("item1");
    r.mutable_filter()->add_must()->set_field("tag");   // No test.
    r.mutable_filter()->add_should()->mutable_match();  // No value.
  }
  {
    auto& r = add("unknown_id");
    r.set_id("nope");
    r.set_top_k(1001);
  }
  return seeds;
}

void ProtoSeeds(const std::string& dir) {
  for (const auto& [name, r] : QuerySeeds()) Write(dir + "/" + name, r.SerializeAsString());
}

void JsonSeeds(const std::string& dir) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  for (const auto& [name, r] : QuerySeeds()) {
    std::string json;
    if (google::protobuf::util::MessageToJsonString(r, &json, options).ok()) {
      Write(dir + "/" + name, json);
    }
  }
  // What only JSON can get wrong.
  const std::vector<std::pair<std::string, std::string>> invalid = {
      {"json_two_kinds", R"({"text":"x","id":"item1"})"},
      {"json_unknown_field", R"({"vectr":{"values":[1]}})"},
      {"json_scalar_value", R"({"id":"item1","filter":{"must":[{"field":"tag","match":"red"}]}})"},
      {"json_camel_case", R"({"id":"item1","topK":3,"includeSelf":true})"},
      {"json_int64_string", R"({"id":"item1","filter":{"must":[{"field":"year",)"
                            R"("in":{"values":[{"integer":"2001"}]}}]}})"},
  };
  for (const auto& [name, body] : invalid) Write(dir + "/" + name, body);
}

void TokenizerSeeds(const std::string& dir) {
  const std::vector<std::pair<std::string, std::string>> seeds = {
      {"plain", std::string("\0", 1) + "a photo of a cat"},
      {"html", std::string("\1", 1) + "Tom &amp; Jerry's <b>ca-fé</b>  I'M   here!!"},
      {"unicode",
       std::string("\2", 1) + "日本語のテキスト ünïcödé 🐱‍👤 e\xcc\x81"},
      {"long_no_truncate", std::string("\3", 1) +
                               "word word word word word word word word word word word word "
                               "word word word word word word word word word word word word "
                               "word word word word word word word word word word word word "
                               "word word word word word word word word word word word word "},
      {"numbers", std::string("\x80", 1) + "12345 3.14 <|startoftext|> <|endoftext|> 's 't 're"},
      {"bad_utf8", std::string("\0", 1) + "caf\xc3 \xff\xfe"},
  };
  for (const auto& [name, text] : seeds) Write(dir + "/" + name, text);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: fuzz_make_seeds <corpus dir>\n";
    return 2;
  }
  const std::string corpus = argv[1];
  for (const char* sub : {"snapshot", "query_proto", "query_json", "tokenizer"}) {
    ::mkdir((corpus + "/" + sub).c_str(), 0755);
  }
  SnapshotSeeds(corpus + "/snapshot");
  ProtoSeeds(corpus + "/query_proto");
  JsonSeeds(corpus + "/query_json");
  TokenizerSeeds(corpus + "/tokenizer");
  return 0;
}
