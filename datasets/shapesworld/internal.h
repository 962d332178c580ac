// Shared internals of ShapesWorld: the palettes and geometry that the renderer draws and the analyser
// reads back (one definition, so the two cannot drift apart), and a portable random number generator.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace collage::shapesworld::detail {

struct Rgb {
  float r = 0, g = 0, b = 0;
};

enum Shape { kCircle = 0, kSquare, kTriangle, kStar, kNumShapes };
enum Tint { kDay = 0, kSunset, kNight, kNumTints };
enum Background { kSky = 0, kGrass, kSand, kWater, kWall, kNumBackgrounds };
enum Pattern { kPlain = 0, kStriped, kDotted, kNumPatterns };
constexpr int kNumColours = 8;
constexpr int kBlack = 7, kWhite = 6;

extern const char* const kShapeNames[kNumShapes];
extern const char* const kColourNames[kNumColours];
extern const char* const kPatternNames[kNumPatterns];
extern const char* const kBackgroundNames[kNumBackgrounds];
extern const char* const kTintNames[kNumTints];

// Index of `name` in the list, or -1.
int find_name(const char* const* names, int n, const std::string& name);
// Index of `name`, or throws collage::Error naming `field` and listing the known names.
int name_index(const char* const* names, int n, const std::string& name, const std::string& what,
               const std::string& field);

// Object base colours (day light, shade 0). Hues are spread so that shading, patterns and mixing with
// white or black (which keep the hue) never move a colour into its neighbour's class.
Rgb colour_rgb(int colour);
// Per-channel multiplier of each tint (a pure multiply, so the analyser can divide it out exactly).
Rgb tint_rgb(int tint);
// Mean background colour (day tint) at height v in [0, 1] (top to bottom): a vertical gradient.
Rgb background_gradient(int background, double v);

// Shape geometry in "local units": object size 1, y pointing up, rotation 0.
double shape_extent(int shape);    // radius of the bounding circle
double shape_inradius(int shape);  // radius of the largest centred circle inside
double shape_area(int shape);
// Signed distance to the outline (negative inside), in local units.
double shape_sdf(int shape, double x, double y);
// Point inside the outline (cheaper than the sdf; the analyser's template fitting).
bool shape_inside(int shape, double x, double y);
// Rotational symmetry period in degrees (circle: 360, any rotation is equivalent but unused).
double shape_period(int shape);

// Light shading: brightness factor of an object colour at t in [-1, 1] (position along the light
// direction, lit side = +1). Shared so that the analyser knows how far shading can move a colour.
inline float shade_channel(float c, float t) { return c * (1.0f + 0.15f * t) + 0.03f * t; }

// splitmix64: portable (std distributions differ between standard libraries).
class Rng {
 public:
  // The seed is scrambled first: seeds s and s + 1 must not give shifted copies of one sequence.
  explicit Rng(uint64_t seed) : state_(mix(seed ^ 0x632BE59BD9B4E019ull)) {}
  uint64_t next() { return mix(state_ += 0x9E3779B97F4A7C15ull); }
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  int index(int n) { return static_cast<int>(uniform() * n) % n; }
  bool chance(double p) { return uniform() < p; }

 private:
  static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t state_;
};

// Deterministic hash of integers to [0, 1) (background textures).
inline float hash01(int64_t x, int64_t y, uint64_t seed) {
  uint64_t h = seed * 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(x) * 0xC2B2AE3D27D4EB4Full) ^
               (static_cast<uint64_t>(y) * 0x165667B19E3779F9ull);
  h ^= h >> 33;
  h *= 0xFF51AFD7ED558CCDull;
  h ^= h >> 33;
  h *= 0xC4CEB9FE1A85EC53ull;
  h ^= h >> 33;
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

}  // namespace collage::shapesworld::detail
