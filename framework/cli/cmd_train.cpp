// collage sandbox train / eval / train-clip / eval-clip, text-diff: the trainers of the embedded ShapesWorld model
// (UNet + text encoder) and the sandbox CLIP, with their evaluations; text-diff for any text encoder.
#include <filesystem>
#include <iostream>
#include <sstream>

#include "cli/common.h"
#include "core/core.h"
#include "models/models.h"
#include "training/training.h"

namespace fs = std::filesystem;

namespace collage::cli {

namespace {
struct TrainArgs {
  std::string world = "shapesworld", config, out;
  int64_t steps = -1;
  double minutes = -1;
  bool resume = false;
};
struct ClipArgs {
  std::string world = "shapesworld", config, out;
  int64_t steps = -1, eval_images = 512;
  double minutes = -1;
  bool resume = false;
};
struct ClipEvalArgs {
  std::string model, json;
  int64_t images = 512;
  uint64_t seed = 0;
};
struct EvalArgs {
  std::string model, images, json;
  int64_t n = 100, steps = 50;
  double guidance = 5.0;
  uint64_t seed = 0;
};

void add_train_model(CLI::App& app, GlobalOptions& global) {
  auto ta = std::make_shared<TrainArgs>();
  auto* train = app.add_subcommand("train", "train a small text-to-image model from scratch on a sandbox world");
  train->add_option("--world", ta->world, "the world the images come from (shapesworld)")->capture_default_str();
  train->add_option("--config", ta->config, "training config JSON (see assets/shapesworld/train_config.json)")
      ->required();
  train->add_option("--out", ta->out, "output folder: checkpoints/, loss.csv, model/ (diffusers layout)")->required();
  train->add_option("--steps", ta->steps, "stop after this many steps (overrides max_steps)");
  train->add_option("--minutes", ta->minutes, "time budget of this run in minutes (overrides max_minutes)");
  train->add_flag("--resume", ta->resume, "continue from the newest checkpoint in --out");
  train->callback([ta, &global] {
    apply_runtime(global);
    COLLAGE_CHECK_AT(ta->world == "shapesworld", "", "--world", "unknown world '{}' (known: shapesworld)",
                     ta->world);
    auto config = training::TrainConfig::from_json_file(ta->config);
    training::TrainOptions o;
    o.out_dir = ta->out;
    o.steps = ta->steps;
    o.minutes = ta->minutes;
    o.resume = ta->resume;
    o.device = global.device;
    std::ostringstream cmd;
    cmd << "collage";
    if (global.threads > 0) cmd << " --threads " << global.threads;
    if (global.device != "cpu") cmd << " --device " << global.device;
    cmd << " sandbox train --world " << ta->world << " --config " << ta->config << " --out " << ta->out;
    if (ta->steps >= 0) cmd << " --steps " << ta->steps;
    if (ta->minutes >= 0) cmd << " --minutes " << ta->minutes;
    if (ta->resume) cmd << " --resume";
    o.command_line = cmd.str();
    auto r = training::train(config, o);
    std::cout << fmt::format("steps {}  final loss {:.4f}  {:.1f} s  model {}\n", r.steps, r.final_loss, r.seconds,
                             r.model_dir);
  });

}

void add_train_clip(CLI::App& app, GlobalOptions& global) {
  auto ca = std::make_shared<ClipArgs>();
  auto* tc = app.add_subcommand("train-clip",
                                "train a small CLIP (image/text, contrastive) from scratch on a sandbox world, for the "
                                "CLIP metrics");
  tc->add_option("--world", ca->world, "the world the images come from (shapesworld)")->capture_default_str();
  tc->add_option("--config", ca->config, "CLIP training config JSON (see assets/shapesworld/clip_config.json)")
      ->required();
  tc->add_option("--out", ca->out, "output folder: loss.csv, model/ (transformers CLIPModel layout)")->required();
  tc->add_option("--steps", ca->steps, "stop after this many steps (overrides max_steps)");
  tc->add_option("--minutes", ca->minutes, "time budget in minutes (overrides max_minutes)");
  tc->add_option("--eval-images", ca->eval_images, "renders for the zero-shot evaluation at the end (0: none)")
      ->capture_default_str();
  tc->add_flag("--resume", ca->resume, "continue from --out's checkpoint (written with every export)");
  tc->callback([ca, &global] {
    apply_runtime(global);
    COLLAGE_CHECK_AT(ca->world == "shapesworld", "", "--world", "unknown world '{}' (known: shapesworld)",
                     ca->world);
    COLLAGE_CHECK_AT(global.device == "cpu", "", "--device", "train-clip runs on the CPU only (it takes minutes)");
    auto config = training::ClipTrainConfig::from_json_file(ca->config);
    training::ClipTrainOptions o;
    o.out_dir = ca->out;
    o.steps = ca->steps;
    o.minutes = ca->minutes;
    o.eval_images = ca->eval_images;
    o.resume = ca->resume;
    std::ostringstream cmd;
    cmd << "collage";
    if (global.threads > 0) cmd << " --threads " << global.threads;
    cmd << " train-clip --world " << ca->world << " --config " << ca->config << " --out " << ca->out;
    if (ca->steps >= 0) cmd << " --steps " << ca->steps;
    if (ca->minutes >= 0) cmd << " --minutes " << ca->minutes;
    if (ca->resume) cmd << " --resume";
    o.command_line = cmd.str();
    auto r = training::train_clip(config, o);
    std::cout << fmt::format("steps {}  final loss {:.4f}  {:.1f} s  model {}\n", r.steps, r.final_loss, r.seconds,
                             r.model_dir);
  });

}

void add_eval_clip(CLI::App& app, GlobalOptions& global) {
  auto cea = std::make_shared<ClipEvalArgs>();
  auto* ce = app.add_subcommand("eval-clip", "zero-shot colour/shape accuracy and retrieval of a CLIP on fresh renders");
  ce->add_option("--model", cea->model, "CLIPModel folder (default: assets/shapesworld/clip)");
  ce->add_option("--images", cea->images, "number of renders")->capture_default_str();
  ce->add_option("--seed", cea->seed, "seed of the renders")->capture_default_str();
  ce->add_option("--json", cea->json, "write the result JSON here");
  ce->callback([cea, &global] {
    apply_runtime(global);
    std::string model = cea->model;
    if (model.empty()) model = find_in_checkout("assets/shapesworld/clip", "config.json");
    COLLAGE_CHECK_AT(!model.empty(), "", "--model", "no model given and assets/shapesworld/clip does not exist");
    auto r = training::evaluate_clip(model, cea->images, cea->seed);
    if (!cea->json.empty()) write_json_file(cea->json, r.to_json());
    std::cout << r.summary() << fmt::format("; {:.1f} s\n", r.seconds);
  });

}

void add_eval_shapesworld(CLI::App& app, GlobalOptions& global) {
  auto ea = std::make_shared<EvalArgs>();
  auto* ev = app.add_subcommand("eval",
                                "held-out compositional test: how often the analyser finds every named colour+shape");
  ev->add_option("--model", ea->model, "model folder (default: the embedded ShapesWorld model)");
  ev->add_option("--n", ea->n, "number of prompts")->capture_default_str();
  ev->add_option("--steps", ea->steps, "sampler steps")->capture_default_str();
  ev->add_option("--guidance", ea->guidance, "classifier-free guidance scale")->capture_default_str();
  ev->add_option("--seed", ea->seed, "seed of the prompts and the noise")->capture_default_str();
  ev->add_option("--images", ea->images, "folder for the generated images, grid.png and eval.json");
  ev->add_option("--json", ea->json, "write the result JSON here");
  ev->callback([ea, &global] {
    apply_runtime(global);
    std::string model = ea->model.empty() ? default_model_dir() : ea->model;
    COLLAGE_CHECK_AT(!model.empty(), "", "--model", "no model given and no embedded default model found");
    training::EvalOptions o;
    o.n = ea->n;
    o.steps = ea->steps;
    o.guidance = ea->guidance;
    o.seed = ea->seed;
    std::vector<at::Tensor> grid;  // framed thumbnails: green = every named object found, red = not
    if (!ea->images.empty()) {
      fs::create_directories(ea->images);
      o.on_image = [&](int64_t i, const at::Tensor& image, bool ok) {
        write_image((fs::path(ea->images) / fmt::format("{:03d}_{}.png", i, ok ? "ok" : "fail")).string(), image);
        auto framed = at::zeros({3, image.size(1) + 4, image.size(2) + 4});
        framed[ok ? 1 : 0].fill_(1.0);
        framed.slice(1, 2, 2 + image.size(1)).slice(2, 2, 2 + image.size(2)).copy_(image);
        grid.push_back(framed);
      };
    }
    Progress progress("eval");
    auto r = training::evaluate_shapesworld(model, o, progress.callback());
    std::cerr << "\n";
    if (!grid.empty()) {
      const size_t per_row = 10;
      while (grid.size() % per_row) grid.push_back(at::zeros_like(grid[0]));
      std::vector<at::Tensor> rows;
      for (size_t k = 0; k < grid.size(); k += per_row)
        rows.push_back(at::cat(std::vector<at::Tensor>(grid.begin() + k, grid.begin() + k + per_row), 2));
      auto g = at::cat(rows, 1).unsqueeze(0);
      g = at::upsample_nearest2d(g, {g.size(2) * 3, g.size(3) * 3}).squeeze(0);
      write_image((fs::path(ea->images) / "grid.png").string(), g);
      write_json_file((fs::path(ea->images) / "eval.json").string(), r.to_json());
    }
    if (!ea->json.empty()) write_json_file(ea->json, r.to_json());
    std::cout << fmt::format(
        "{} prompts ({} steps, guidance {}): every named object found {}/{} = {:.1f} % (and nothing else: {}/{} = "
        "{:.1f} %); held-out object found {}/{} = {:.1f} %; objects {}/{}; {:.1f} s\n",
        r.prompts, ea->steps, ea->guidance, r.all_found, r.prompts, 100.0 * r.all_found / std::max<int64_t>(1, r.prompts),
        r.exact, r.prompts, 100.0 * r.exact / std::max<int64_t>(1, r.prompts),
        r.held_out_found, r.prompts, 100.0 * r.held_out_found / std::max<int64_t>(1, r.prompts), r.objects_found,
        r.objects, r.seconds);
  });

}

}  // namespace

void add_train_commands(CLI::App& app, GlobalOptions& global) {
  add_train_model(app, global);
  add_train_clip(app, global);
  add_eval_clip(app, global);
  add_eval_shapesworld(app, global);
}

void add_text_diff_command(CLI::App& app, GlobalOptions& global) {
  struct TextDiffArgs {
    std::string model, a, b;
  };
  auto td = std::make_shared<TextDiffArgs>();
  auto* tdc = app.add_subcommand("text-diff",
                                 "how far the text encoder's per-token states of two prompts are apart (does it see "
                                 "the word that differs?)");
  tdc->add_option("a", td->a, "first prompt")->required();
  tdc->add_option("b", td->b, "second prompt")->required();
  tdc->add_option("--model", td->model,
                  "a pipeline folder (its tokenizer/ and text_encoder/) or a CLIP / CLIPTextModel folder with "
                  "tokenizer files (default: the embedded model)");
  tdc->callback([td, &global] {
    apply_runtime(global);
    std::string model = td->model.empty() ? default_model_dir() : td->model;
    COLLAGE_CHECK_AT(!model.empty(), "", "--model", "no model given and no embedded default model found");
    const bool pipeline = fs::is_directory(fs::path(model) / "text_encoder");
    const auto tok_dir = pipeline ? (fs::path(model) / "tokenizer").string() : model;
    const auto te_dir = pipeline ? (fs::path(model) / "text_encoder").string() : model;
    auto tokenizer = ClipTokenizer::from_folder(tok_dir);
    auto text_encoder = ClipTextModelImpl::load(te_dir);
    text_encoder->eval();
    const auto d = compare_text_states(*text_encoder, tokenizer, td->a, td->b);
    std::cout << fmt::format("{}: last hidden states of\n  a: {}\n  b: {}\n\n", te_dir, td->a, td->b);
    std::cout << "| pos | token a | token b | relative L2 |a-b|/|a| | cosine |\n|---:|---|---|---:|---:|\n";
    for (const auto& x : d)
      std::cout << fmt::format("| {} | {} | {} | {:.4f} | {:.4f} |\n", x.position, x.token_a, x.token_b, x.relative_l2,
                               x.cosine);
  });
}

}  // namespace collage::cli
