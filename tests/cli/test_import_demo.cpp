// `collage import-demo` as a user runs it, on collages written here in the authors' demo format: where each
// layer lands on the canvas after `collage generate --method flatten` (against their geometry: polygon mask and
// crop, each side int(side * 512 * scale), top-left at (int(512 x), int(512 y)), rotation inside the box), and
// every strength and setting carried over.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "collage/collage.h"
#include "core/core.h"
#include "test_util.h"

#ifndef COLLAGE_BINARY
#error "COLLAGE_BINARY must be defined by the build"
#endif

using namespace collage;
namespace fs = std::filesystem;

namespace {

struct Run {
  int rc;
  std::string output;
};

// Runs the collage binary with `args`; stdout and stderr together.
Run collage_cli(const std::string& args) {
  const std::string cmd = std::string("OMP_WAIT_POLICY=passive '") + COLLAGE_BINARY + "' --threads 1 " + args + " 2>&1";
  Run r{-1, {}};
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) r.output.append(buf, n);
  const int status = pclose(pipe);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// A solid image: RGB (3 channels) or opaque RGBA.
void write_solid(const std::string& path, int64_t w, int64_t h, std::array<float, 3> colour, bool alpha) {
  auto t = at::ones({alpha ? 4 : 3, h, w});
  for (int k = 0; k < 3; ++k) t[k].fill_(colour[k]);
  write_image(path, t);
}

struct Box {
  int64_t x0 = 0, y0 = 0, x1 = 0, y1 = 0;  // [x0, x1) x [y0, y1)
};

std::ostream& operator<<(std::ostream& os, const Box& b) {
  return os << "[" << b.x0 << ", " << b.x1 << ") x [" << b.y0 << ", " << b.y1 << ")";
}

// The bounding box of the pixels within 0.2 (each channel) of `colour`.
Box colour_box(const at::Tensor& image, std::array<float, 3> colour) {
  auto near = at::ones({image.size(1), image.size(2)}, at::kBool);
  for (int k = 0; k < 3; ++k) near = near & ((image[k] - colour[k]).abs() < 0.2);
  const auto rows = at::nonzero(near.any(1)).flatten(), cols = at::nonzero(near.any(0)).flatten();
  if (rows.numel() == 0) return {};
  return {cols.min().item<int64_t>(), rows.min().item<int64_t>(), cols.max().item<int64_t>() + 1,
          rows.max().item<int64_t>() + 1};
}

void expect_box_near(const Box& got, const Box& want, const std::string& what, int64_t tol = 2) {
  EXPECT_TRUE(std::abs(got.x0 - want.x0) <= tol && std::abs(got.x1 - want.x1) <= tol &&
              std::abs(got.y0 - want.y0) <= tol && std::abs(got.y1 - want.y1) <= tol)
      << what << ": on the canvas at " << got << ", their geometry puts it at " << want;
}

// Their placement of an unrotated w x h crop: each side int(side * 512 * scale), top-left at
// (int(512 x), int(512 y)), clipped to the canvas.
Box their_box(int64_t w, int64_t h, double scale, double x, double y, int64_t canvas = 512) {
  const double f = canvas * scale;
  const auto px = static_cast<int64_t>(std::trunc(canvas * x)), py = static_cast<int64_t>(std::trunc(canvas * y));
  const auto rw = static_cast<int64_t>(w * f), rh = static_cast<int64_t>(h * f);
  return {std::max<int64_t>(0, px), std::max<int64_t>(0, py), std::min(canvas, px + rw), std::min(canvas, py + rh)};
}

// Their rotated placement: the resized rw x rh image rotated counter-clockwise by `degrees` about its centre,
// kept inside its own box (PIL rotate without expand), the box's top-left at (px, py). Pixel centres tested.
Box their_rotated_box(int64_t rw, int64_t rh, double degrees, int64_t px, int64_t py) {
  const double th = degrees * M_PI / 180.0, c = std::cos(th), s = std::sin(th);
  Box b{1 << 20, 1 << 20, -1, -1};
  for (int64_t v = 0; v < rh; ++v)
    for (int64_t u = 0; u < rw; ++u) {
      // Box pixel centre relative to the centre; un-rotate (screen y points down) and test the source rectangle.
      const double dx = u + 0.5 - rw / 2.0, dy = v + 0.5 - rh / 2.0;
      const double sx = c * dx - s * dy, sy = s * dx + c * dy;
      if (std::abs(sx) > rw / 2.0 || std::abs(sy) > rh / 2.0) continue;
      b.x0 = std::min(b.x0, px + u), b.y0 = std::min(b.y0, py + v);
      b.x1 = std::max(b.x1, px + u + 1), b.y1 = std::max(b.y1, py + v + 1);
    }
  return b;
}

Json demo_layer(int id, const std::string& url, const std::string& text, std::array<double, 4> strengths,
                std::array<double, 4> transform, Json polygon = Json::array()) {
  return {{"id", id},
          {"key", fmt::format("key{}", id)},
          {"originalImgUrl", url},
          {"textPrompt", text},
          {"cacStrength", strengths[0]},
          {"negativeStrength", strengths[1]},
          {"noiseStrength", strengths[2]},
          {"cannyStrength", strengths[3]},
          {"transform",
           {{"position", {{"x", transform[0]}, {"y", transform[1]}}}, {"scale", transform[2]}, {"rotation", transform[3]}}},
          {"polygon", polygon}};
}

const std::array<float, 3> kRoom{0.2f, 0.6f, 0.2f}, kCarpet{0.9f, 0.1f, 0.1f}, kLamp{0.1f, 0.1f, 0.9f},
    kSquare{0.95f, 0.9f, 0.1f};

// The authors' example-list shape with two collages: a room (RGB photo, scale 0.0019), a carpet cut out by a
// diamond polygon, a lamp rotated 90 degrees; then a square rotated 30 degrees at scale 2 px per pixel.
Json example_list(const std::string& bucket) {
  Json diamond = Json::array();
  for (auto [x, y] : std::vector<std::pair<double, double>>{{0.5, 0.105}, {0.895, 0.5}, {0.5, 0.895}, {0.105, 0.5}})
    diamond.push_back({{"x", x}, {"y", y}});
  Json lamp = demo_layer(2, bucket + "lamp.png", "lamp", {0.88, 0.7, 0.4, 0.5}, {0.7, 0.1, 1.0 / 512, 90});
  lamp["wordEmbedding"] = "emb/lamp.safetensors";
  Json first = {{"collagePrompt", "a room  with a carpet   and a lamp "},
                {"numInferenceSteps", 3},
                {"guidanceScale", 6.5},
                {"seed", "44"},
                {"numFrames", 4},
                {"layers",
                 {demo_layer(0, bucket + "5f58ea0c", "room", {0.2, 0.3, 0.9, 0.1}, {-0.1, 0.05, 0.0019, 0}),
                  demo_layer(1, bucket + "carpet", "carpet", {0.66, 0.61, 0.5, 0.4}, {0.3, 0.5, 1.5 / 512, 0}, diamond),
                  lamp}},
                {"inputTokenData", {{{"data", "a"}, {"id", "start"}}, {{"data", "room"}, {"layerKey", "key0"}, {"id", "t1"}}, {{"id", "end"}}}},
                {"layerToIndexMap", {{"key0", 1}}}};
  Json second = {{"collagePrompt", "a yellow square"},
                 {"numInferenceSteps", 2},
                 {"guidanceScale", 7},
                 {"seed", 7},
                 {"numFrames", 4},
                 {"layers", {demo_layer(0, bucket + "square.png/", "yellow square", {0.5, 0.5, 0.6, 0.0}, {0.25, 0.25, 2.0 / 512, 30})}},
                 {"inputTokenData", Json::array()}};
  return {{{"collage", first}, {"collageImage", bucket + "collage.png"}, {"generatedImage", bucket + "out.png"}},
          {{"collage", second}}};
}

class ImportDemo : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("import_demo");
    images_ = dir_ + "/images";
    fs::create_directories(images_);
    fs::create_directories(dir_ + "/emb");
    write_solid(images_ + "/room.png", 600, 400, kRoom, /*alpha=*/false);  // RGB (a photo), then no extension:
    fs::rename(images_ + "/room.png", images_ + "/5f58ea0c");               // named as in their bucket
    write_solid(images_ + "/carpet.png", 100, 100, kCarpet, true);          // found without the extension
    write_solid(images_ + "/lamp.png", 80, 40, kLamp, true);
    write_solid(images_ + "/square.png", 50, 50, kSquare, true);
    std::ofstream(dir_ + "/emb/lamp.safetensors") << "not read by flatten";
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write_demo(const std::string& name, const Json& j) {
    const auto path = dir_ + "/" + name;
    write_json_file(path, j);
    return path;
  }

  std::string dir_, images_;
  const std::string bucket_ = "https://storage.googleapis.com/collage-bucket/";
};

}  // namespace

TEST_F(ImportDemo, ExampleListLandsWhereTheirServerPutsIt) {
  const auto file = write_demo("examples.json", example_list(bucket_));
  const auto out = dir_ + "/out";
  auto r = collage_cli(fmt::format("import-demo '{}' --images '{}' --out '{}'", file, images_, out));
  ASSERT_EQ(r.rc, 0) << r.output;

  // A dataset as `collage sweep` reads it.
  const auto folders = list_collages(out);
  ASSERT_EQ(folders.size(), 2u);
  EXPECT_EQ(fs::path(folders[0]).filename().string(), "0");
  auto c = load_collage(folders[0]);
  EXPECT_EQ(c.prompt, "a room with a carpet and a lamp");  // spaces normalised
  EXPECT_EQ(c.width, 512);
  ASSERT_EQ(c.layers.size(), 3u);
  const std::vector<std::array<double, 4>> strengths{{0.2, 0.3, 0.9, 0.1}, {0.66, 0.61, 0.5, 0.4}, {0.88, 0.7, 0.4, 0.5}};
  for (size_t i = 0; i < 3; ++i) {
    const auto& l = c.layers[i];
    EXPECT_DOUBLE_EQ(l.w_pos, strengths[i][0]) << i;
    EXPECT_DOUBLE_EQ(l.w_neg, strengths[i][1]) << i;
    EXPECT_DOUBLE_EQ(l.noise_strength, strengths[i][2]) << i;
    EXPECT_DOUBLE_EQ(l.control_strength, strengths[i][3]) << i;
    EXPECT_EQ(l.name, fmt::format("key{}", i));
  }
  EXPECT_EQ(c.layers[2].embedding, "layer_2_embedding.safetensors");
  EXPECT_TRUE(fs::exists(fs::path(folders[0]) / c.layers[2].embedding));
  EXPECT_EQ(c.meta["seed"], 44);  // a number, from the string "44"
  EXPECT_EQ(c.meta["num_inference_steps"], 3);
  EXPECT_DOUBLE_EQ(c.meta["guidance_scale"].get<double>(), 6.5);
  EXPECT_EQ(c.meta["num_frames"], 4);
  EXPECT_EQ(load_collage(folders[1]).meta["seed"], 7);

  // Flatten with the collage's own settings (no --seed/--steps/--guidance).
  r = collage_cli(fmt::format("generate --collage '{}' --method flatten --out '{}'", folders[0], dir_ + "/gen0"));
  ASSERT_EQ(r.rc, 0) << r.output;
  ASSERT_TRUE(fs::exists(dir_ + "/gen0/seed_44.png")) << r.output;
  const Json record = read_json_file(dir_ + "/gen0/record.json");
  EXPECT_EQ(record["steps"], 3);
  EXPECT_DOUBLE_EQ(record["guidance_scale"].get<double>(), 6.5);
  const auto image = read_image(dir_ + "/gen0/seed_44.png");
  ASSERT_EQ(image.size(1), 512);
  // Room: 600x400, scale 0.0019 -> 583x389 at (int(-51.2), int(25.6)) = (-51, 25), clipped to the canvas.
  expect_box_near(colour_box(image, kRoom), their_box(600, 400, 0.0019, -0.1, 0.05), "room");
  // Carpet: the diamond's mask spans pixels 11..89 -> a 79x79 crop, x1.5 -> 118x118 at (153, 256).
  const Box carpet = their_box(79, 79, 1.5 / 512, 0.3, 0.5);
  expect_box_near(colour_box(image, kCarpet), carpet, "carpet (polygon)");
  auto at = [&](int64_t x, int64_t y) {
    return std::array<float, 3>{image[0][y][x].item<float>(), image[1][y][x].item<float>(), image[2][y][x].item<float>()};
  };
  EXPECT_NEAR(at(carpet.x0 + 59, carpet.y0 + 59)[0], kCarpet[0], 0.02);  // the diamond's centre
  EXPECT_NEAR(at(carpet.x0 + 3, carpet.y0 + 3)[0], kRoom[0], 0.02);     // its crop box's corner: cut away
  // Lamp: 80x40, rotated 90 degrees inside its box at (358, 51): the middle 40x40 stays.
  expect_box_near(colour_box(image, kLamp), their_rotated_box(80, 40, 90, 358, 51), "lamp (rotated 90)");
  EXPECT_EQ((their_rotated_box(80, 40, 90, 358, 51).x0), 378);  // the formula itself, by hand

  // The second collage: a 50x50 square, x2 -> 100x100 at (128, 128), rotated 30 degrees inside its box.
  r = collage_cli(fmt::format("generate --collage '{}' --method flatten --out '{}'", folders[1], dir_ + "/gen1"));
  ASSERT_EQ(r.rc, 0) << r.output;
  const auto square = read_image(dir_ + "/gen1/seed_7.png");
  expect_box_near(colour_box(square, kSquare), their_rotated_box(100, 100, 30, 128, 128), "square (rotated 30)");

  // The command line wins over the collage's settings.
  r = collage_cli(fmt::format("generate --collage '{}' --method flatten --seed 5 --steps 2 --guidance 3 --out '{}'",
                              folders[0], dir_ + "/gen2"));
  ASSERT_EQ(r.rc, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir_ + "/gen2/seed_5.png"));
  const Json record2 = read_json_file(dir_ + "/gen2/record.json");
  EXPECT_EQ(record2["steps"], 2);
  EXPECT_DOUBLE_EQ(record2["guidance_scale"].get<double>(), 3.0);
}

TEST_F(ImportDemo, CollageRequestBareLayersAndCanvasSize) {
  // A collage request {prompt, layers, ...} with a local image next to the file, imported on a 256 canvas.
  write_solid(dir_ + "/mat.png", 200, 100, kCarpet, true);
  Json request = {{"prompt", "a cat on a mat"},
                  {"numInferenceSteps", 4},
                  {"guidanceScale", 5},
                  {"seed", 3},
                  {"layers", {demo_layer(0, "mat.png", "mat", {0.1, 0.2, 0.3, 0.4}, {0.5, 0.25, 0.001, 0})}}};
  auto r = collage_cli(fmt::format("import-demo '{}' --out '{}' --size 256", write_demo("request.json", request),
                                   dir_ + "/req"));
  ASSERT_EQ(r.rc, 0) << r.output;
  auto c = load_collage(dir_ + "/req/0");
  EXPECT_EQ(c.width, 256);
  EXPECT_DOUBLE_EQ(c.layers[0].control_strength, 0.4);
  EXPECT_EQ(c.meta["seed"], 3);
  r = collage_cli(fmt::format("generate --collage '{}' --method flatten --out '{}'", dir_ + "/req/0", dir_ + "/g"));
  ASSERT_EQ(r.rc, 0) << r.output;
  // 200x100, factor 256 * 0.001 -> 51x25 at (128, 64).
  expect_box_near(colour_box(read_image(dir_ + "/g/seed_3.png"), kCarpet), their_box(200, 100, 0.001, 0.5, 0.25, 256),
                  "mat on a 256 canvas");

  // A bare layer list needs --prompt.
  Json bare = {demo_layer(0, bucket_ + "lamp", "lamp", {0.3, 0.4, 0.5, 0.6}, {0.0, 0.0, 1.0 / 512, 0})};
  const auto bare_file = write_demo("layers.json", bare);
  r = collage_cli(fmt::format("import-demo '{}' --images '{}' --out '{}'", bare_file, images_, dir_ + "/bare"));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.output.find("--prompt"), std::string::npos) << r.output;
  r = collage_cli(fmt::format("import-demo '{}' --images '{}' --out '{}' --prompt 'a lamp  on the floor'", bare_file,
                              images_, dir_ + "/bare"));
  ASSERT_EQ(r.rc, 0) << r.output;
  c = load_collage(dir_ + "/bare/0");
  EXPECT_EQ(c.prompt, "a lamp on the floor");
  EXPECT_DOUBLE_EQ(c.layers[0].w_neg, 0.4);
  EXPECT_EQ(c.layers[0].rgba.size(2), 80);  // factor 1
  EXPECT_EQ(sampling_defaults(c).seed.has_value(), false);
}

TEST_F(ImportDemo, MissingImageNamesCollageLayerAndFileAndWritesNothing) {
  Json examples = example_list(bucket_);
  examples[1]["collage"]["layers"][0]["originalImgUrl"] = bucket_ + "e2c2617616e3";
  const auto out = dir_ + "/out";
  auto r = collage_cli(fmt::format("import-demo '{}' --images '{}' --out '{}'", write_demo("ex.json", examples),
                                   images_, out));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.output.find("collage 1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("layer 0 ('yellow square')"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(images_ + "/e2c2617616e3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[1].collage.layers[0].originalImgUrl"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out + "/0")) << "the valid first collage must not be written either";
  EXPECT_FALSE(fs::exists(out + "/index.json"));

  // A URL without --images says what to do.
  r = collage_cli(fmt::format("import-demo '{}' --out '{}'", write_demo("ex2.json", example_list(bucket_)), out));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.output.find("--images"), std::string::npos) << r.output;

  // A layer text the prompt lacks is named in the authors' terms.
  examples = example_list(bucket_);
  examples[0]["collage"]["layers"][1]["textPrompt"] = "rug";
  r = collage_cli(fmt::format("import-demo '{}' --images '{}' --out '{}'", write_demo("ex3.json", examples), images_, out));
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.output.find("[0].collage.layers[1].text"), std::string::npos) << r.output;
}
