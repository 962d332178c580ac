// collage txt2img / img2img: plain Stable Diffusion generation with any diffusers model folder.
#include <ATen/ATen.h>

#include <filesystem>
#include <iostream>

#include "cli/common.h"
#include "core/core.h"
#include "diffusion/diffusion.h"

namespace fs = std::filesystem;

namespace collage::cli {

namespace {

struct GenerateArgs {
  std::string model, prompt, negative_prompt, out = "out.png", scheduler, variant, image, seeds = "0";
  int64_t steps = 50, height = 0, width = 0;
  double guidance = 7.5, strength = 0.8;
};

std::string output_path(const std::string& out, uint64_t seed, size_t count) {
  if (count == 1) return out;
  auto p = fs::path(out);
  return (p.parent_path() / (p.stem().string() + "_seed" + std::to_string(seed) + p.extension().string())).string();
}

void add_common(CLI::App* cmd, GenerateArgs& a) {
  cmd->add_option("--model", a.model, "diffusers pipeline folder (default: the embedded ShapesWorld model)");
  cmd->add_option("--prompt", a.prompt, "text prompt")->required();
  cmd->add_option("--negative-prompt", a.negative_prompt, "negative prompt (the unconditional branch of CFG)");
  cmd->add_option("--seed,--seeds", a.seeds, "seed, list or range: 7, 1-10, 1,4,9 (one image per seed)")
      ->capture_default_str();
  cmd->add_option("--steps", a.steps, "inference steps")->capture_default_str();
  cmd->add_option("--guidance", a.guidance, "classifier-free guidance scale (<= 1 disables CFG)")->capture_default_str();
  cmd->add_option("--scheduler", a.scheduler,
                  "euler_ancestral, euler, ddim, ddpm, pndm, dpmsolver_multistep (default: the model's)");
  cmd->add_option("--variant", a.variant, "weights variant, e.g. fp16 (*.fp16.safetensors)");
  cmd->add_option("--out", a.out, "output PNG (several seeds: NAME_seedN.png)")->capture_default_str();
}

void run_generate(const GenerateArgs& a, const GlobalOptions& g, bool is_img2img) {
  apply_runtime(g);
  const auto seeds = parse_seeds(a.seeds);
  auto sd = load_pipeline(a.model, a.variant, a.scheduler, g);
  GenerateRequest req;
  req.prompt = a.prompt;
  req.negative_prompt = a.negative_prompt;
  req.steps = a.steps;
  req.guidance_scale = a.guidance;
  req.height = a.height;
  req.width = a.width;
  req.strength = a.strength;
  if (is_img2img) req.init_image = read_image(a.image).unsqueeze(0);
  check_request(*sd, req, is_img2img);
  if (!fs::path(a.out).parent_path().empty()) fs::create_directories(fs::path(a.out).parent_path());
  SeededNoise noise(seeds);
  Progress progress(is_img2img ? "img2img" : "txt2img");
  const double t1 = now_seconds();
  auto out = is_img2img ? img2img(*sd, req, noise, seeds.size(), {}, progress.callback())
                        : txt2img(*sd, req, noise, seeds.size(), {}, progress.callback());
  const double seconds = now_seconds() - t1;
  for (size_t i = 0; i < seeds.size(); ++i) {
    const auto path = output_path(a.out, seeds[i], seeds.size());
    write_image(path, out.images[i]);
    std::cout << path << "\n";
  }
  std::cerr << fmt::format("{} image(s), {} steps in {:.2f} s\n", seeds.size(), out.timesteps.size(), seconds);
}

}  // namespace

void add_generate_commands(CLI::App& app, GlobalOptions& global) {
  auto args = std::make_shared<GenerateArgs>();
  auto* t2i = app.add_subcommand("txt2img", "text-to-image with classifier-free guidance");
  add_common(t2i, *args);
  t2i->add_option("--height", args->height, "image height (default: the model's native size)");
  t2i->add_option("--width", args->width, "image width (default: the model's native size)");
  t2i->callback([args, &global] { run_generate(*args, global, false); });

  auto args2 = std::make_shared<GenerateArgs>();
  auto* i2i = app.add_subcommand("img2img", "image-to-image (SDEdit): noise the image to --strength, then denoise");
  add_common(i2i, *args2);
  i2i->add_option("--image", args2->image, "input image (PNG/JPEG); its size is the output size")
      ->required()->check(CLI::ExistingFile);
  i2i->add_option("--strength", args2->strength, "fraction of the schedule to run, in (0, 1]")->capture_default_str();
  i2i->callback([args2, &global] { run_generate(*args2, global, true); });
}

}  // namespace collage::cli
