#include "libs/snapshot/vector_io.h"

#include <catch2/catch.hpp>
#include <cstring>

namespace imagesearch {
namespace {

TEST_CASE("npy round-trips and rejects truncation and bad dtypes") {
  VectorSet s;
  s.count = 3;
  s.dim = 2;
  s.data = {1, 2, 3, 4, 5, 6};
  std::string bytes = EncodeNpy(s);
  auto back = ParseNpy(bytes);
  REQUIRE(back.ok());
  CHECK(back->count == 3);
  CHECK(back->dim == 2);
  CHECK(back->data == s.data);
  auto cut = ParseNpy(bytes.substr(0, bytes.size() - 4));
  REQUIRE_FALSE(cut.ok());
  CHECK(cut.status().message().find("truncated") != std::string::npos);
  std::string ints = bytes;
  ints.replace(ints.find("<f4"), 3, "<i4");
  CHECK(ParseNpy(ints).status().message().find("not float32") != std::string::npos);
  CHECK_FALSE(ParseNpy("hello").ok());
}

TEST_CASE("fvecs parses and rejects mixed dims") {
  std::string b;
  auto add = [&](std::vector<float> v) {
    int32_t d = static_cast<int32_t>(v.size());
    b.append(reinterpret_cast<char*>(&d), 4);
    b.append(reinterpret_cast<char*>(v.data()), v.size() * 4);
  };
  add({1, 2, 3});
  add({4, 5, 6});
  auto s = ParseFvecs(b);
  REQUIRE(s.ok());
  CHECK(s->count == 2);
  CHECK(s->data[4] == 5);
  add({1, 2});
  CHECK(ParseFvecs(b).status().message() == ".fvecs vector 2 has dim 2, earlier ones 3");
}

}  // namespace
}  // namespace imagesearch
