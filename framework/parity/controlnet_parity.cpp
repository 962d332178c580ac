// controlnet/ (shared/golden/controlnet/README.md): ControlNetModel forward cases, the per-pixel conditioning
// scale, the ControlNet pipelines and the Canny control images.
#include <ATen/ATen.h>
#include <torch/torch.h>

#include <filesystem>
#include <set>

#include "core/core.h"
#include "diffusion/diffusion.h"
#include "nets/nets.h"  // pil_resize: the pipelines' Lanczos resize of the control image
#include "models/models.h"
#include "parity/parity.h"
#include "parity/pipeline_run.h"

namespace fs = std::filesystem;

namespace collage::parity {

namespace {

using Tensors = std::map<std::string, at::Tensor>;

// Case prefixes of `tensors`: names "<case><suffix>".
std::set<std::string> case_prefixes(const Tensors& tensors, const std::string& suffix) {
  std::set<std::string> out;
  for (const auto& [name, t] : tensors)
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.insert(name.substr(0, name.size() - suffix.size()));
  return out;
}

void compare_residuals(Recorder& rec, const std::string& prefix, const UNetResiduals& got, const Tensors& ref) {
  size_t k = 0;
  for (; ref.count(prefix + "down_block_res_samples." + std::to_string(k)); ++k) {
    const auto name = prefix + "down_block_res_samples." + std::to_string(k);
    if (k < got.down.size())
      rec.tensor(name, got.down[k], ref.at(name));
    else
      rec.failure(name, fmt::format("the ControlNet gave only {} down residuals", got.down.size()));
  }
  rec.exact(prefix + "num_down_residuals", k == got.down.size(),
            fmt::format("{} down residuals, reference {}", got.down.size(), k));
  rec.tensor(prefix + "mid_block_res_sample", got.mid, ref.at(prefix + "mid_block_res_sample"));
}

struct Models {
  ControlNetModel net{nullptr};
  UNet2DConditionModel unet{nullptr};
};

// cases.safetensors: residuals (scalar scale, guess mode), debug intermediates, UNet outputs with them.
void check_forward_cases(Models& m, const std::string& path, Recorder& rec) {
  const auto ref = load_safetensors(path);
  const auto& tg = rec.target();
  const auto prefixes = case_prefixes(ref, ".controlnet_cond");
  COLLAGE_CHECK_AT(!prefixes.empty(), path, "", "no '<case>.controlnet_cond' tensors found");
  for (const auto& c : prefixes) {
    try {
      const std::string p = c + ".";
      const double scale = ref.at(p + "conditioning_scale").item<double>();
      const bool guess = ref.count(p + "guess_scales") > 0;
      const auto sample = tg.in(ref.at(p + "sample"));
      const auto timestep = ref.at(p + "timestep").to(tg.device);
      const auto ehs = tg.in(ref.at(p + "encoder_hidden_states"));
      Tensors debug;
      auto res = m.net->forward(sample, timestep, ehs, tg.in(ref.at(p + "controlnet_cond")), scale, guess, nullptr,
                                &debug);
      compare_residuals(rec, p, res, ref);
      if (guess)
        rec.tensor(p + "guess_scales", at::logspace(-1, 0, int64_t(res.down.size()) + 1, 10.0, at::kFloat) * scale,
                   ref.at(p + "guess_scales"));
      const std::string dbg = p + "debug.";
      for (const auto& [name, t] : ref) {
        if (name.rfind(dbg, 0) != 0) continue;
        auto it = debug.find(name.substr(dbg.size()));
        if (it == debug.end())
          rec.failure(name, "the ControlNet has no intermediate output named '" + name.substr(dbg.size()) + "'");
        else
          rec.tensor(name, it->second, t);
      }
      if (ref.count(p + "unet_out"))
        rec.tensor(p + "unet_out", m.unet->forward(sample, timestep, ehs, nullptr, nullptr, &res), ref.at(p + "unet_out"));
      if (ref.count(p + "unet_out_no_control"))
        rec.tensor(p + "unet_out_no_control", m.unet->forward(sample, timestep, ehs), ref.at(p + "unet_out_no_control"));
    } catch (const std::exception& e) {
      rec.failure(c, e.what());
    }
  }
}

// per_pixel_scale.safetensors: the authors' map, resized bilinearly onto every residual.
void check_per_pixel_cases(Models& m, const std::string& path, Recorder& rec) {
  const auto ref = load_safetensors(path);
  const auto& tg = rec.target();
  const auto prefixes = case_prefixes(ref, ".scale_map");
  COLLAGE_CHECK_AT(!prefixes.empty(), path, "", "no '<case>.scale_map' tensors found");
  for (const auto& c : prefixes) {
    try {
      const std::string p = c + ".";
      const auto sample = tg.in(ref.at(p + "sample"));
      const auto timestep = ref.at(p + "timestep").to(tg.device);
      const auto ehs = tg.in(ref.at(p + "encoder_hidden_states"));
      const auto cond = tg.in(ref.at(p + "controlnet_cond"));
      const auto map = tg.in(ref.at(p + "scale_map"));
      auto unscaled = m.net->forward(sample, timestep, ehs, cond, 1.0);
      for (size_t k = 0; k <= unscaled.down.size(); ++k) {
        const bool mid = k == unscaled.down.size();
        const auto& r = mid ? unscaled.mid : unscaled.down[k];
        const std::string key = mid ? "mid" : std::to_string(k);
        rec.tensor(p + "residual_unscaled." + key, r, ref.at(p + "residual_unscaled." + key));
        auto resized = at::upsample_bilinear2d(map.unsqueeze(0).unsqueeze(0), {r.size(2), r.size(3)}, false);
        rec.tensor(p + "scale_map_resized." + key, resized, ref.at(p + "scale_map_resized." + key));
      }
      auto res = m.net->forward(sample, timestep, ehs, cond, ControlScale(map));
      compare_residuals(rec, p, res, ref);
      rec.tensor(p + "unet_out", m.unet->forward(sample, timestep, ehs, nullptr, nullptr, &res), ref.at(p + "unet_out"));
    } catch (const std::exception& e) {
      rec.failure(c, e.what());
    }
  }
}

// diffusers' prepare_image for a PIL control image: Lanczos resize to height x width when the size differs,
// / 255, NCHW (not normalised to [-1, 1]).
at::Tensor prepare_control_image(const at::Tensor& hwc_u8, int64_t height, int64_t width) {
  auto img = hwc_u8;
  if (img.size(0) != height || img.size(1) != width) img = pil_resize(img, height, width, PilFilter::Lanczos);
  return img.to(at::kFloat).div(255.0).permute({2, 0, 1}).unsqueeze(0).contiguous();
}

void check_pipeline_runs(StableDiffusion& sd, Models& m, const Json& cfg, const std::string& folder,
                         Recorder& rec) {
  for (auto it = cfg.at("runs").begin(); it != cfg.at("runs").end(); ++it) {
    const auto& kind = it.key();
    const auto& run = it.value();
    try {
      const auto ref = load_safetensors((fs::path(folder) / run.at("file").get<std::string>()).string());
      const auto control = prepare_control_image(ref.at("control_image_input_u8"), run.at("height").get<int64_t>(),
                                                 run.at("width").get<int64_t>());
      const auto& ref_control = ref.at("control_image");
      const bool control_equal = control.sizes() == ref_control.narrow(0, 0, 1).sizes() &&
                                 at::equal(control.expand_as(ref_control), ref_control);
      rec.exact(kind + ".control_image", control_equal, "prepared control image differs from the reference");
      ControlNetCall call;
      call.net = m.net;
      call.image = rec.target().in(control);
      call.scale = run.at("controlnet_conditioning_scale").get<double>();
      call.guess_mode = run.at("guess_mode").get<bool>();
      UNetResiduals first;
      call.on_residuals = [&first](const StepInfo& step, const UNetResiduals& r) {
        if (step.index == 0) first = r;
      };
      check_pipeline_run(sd, run, kind, run, folder, rec, controlnet_model_fn(sd, call));
      compare_residuals(rec, kind + ".step_00.controlnet.", first, [&] {
        Tensors step0;  // the recorded names without the "step_00.controlnet." part, under the run's prefix
        const std::string p = "step_00.controlnet.";
        for (const auto& [name, t] : ref)
          if (name.rfind(p, 0) == 0) step0[kind + "." + name] = t;
        return step0;
      }());
    } catch (const std::exception& e) {
      rec.failure(kind, e.what());
    }
  }
}

// canny/: edges of the RGB input (exact) and the 3-channel control image, from the tensors and from the PNGs.
void check_canny(const std::string& folder, Recorder& rec) {
  const auto json_path = (fs::path(folder) / "canny.json").string();
  const auto cfg = read_json_file(json_path);
  const auto ref = load_safetensors((fs::path(folder) / "canny.safetensors").string());
  CannyThresholds thresholds{cfg.at("threshold1").get<double>(), cfg.at("threshold2").get<double>()};
  for (const auto& file : cfg.at("files")) {
    const auto name = file.at("name").get<std::string>();
    try {
      const auto input = ref.at(name + ".input_u8");
      const auto edges = canny_edges_u8(input, thresholds);
      const auto& ref_edges = ref.at(name + ".edges_u8");
      const bool same = edges.sizes() == ref_edges.sizes() && at::equal(edges, ref_edges);
      rec.exact(name + ".edges_u8", same,
                same ? "" : fmt::format("{} of {} pixels differ", edges.ne(ref_edges).sum().item<int64_t>(),
                                        ref_edges.numel()));
      const auto png = read_image((fs::path(folder) / file.at("input").get<std::string>()).string());
      const auto control = canny_control_image(png, thresholds);
      rec.exact(name + ".control (from the PNG)", control.sizes() == ref.at(name + ".control").sizes() &&
                                                      at::equal(control, ref.at(name + ".control")));
      const auto control_u8 = control[0].mul(255.0).round().to(at::kByte).permute({1, 2, 0});
      rec.exact(name + ".control_u8", at::equal(control_u8, ref.at(name + ".control_u8")));
    } catch (const std::exception& e) {
      rec.failure(name, e.what());
    }
  }
}

}  // namespace

void check_controlnet(const std::string& folder, Recorder& rec) {
  const auto json_path = (fs::path(folder) / "pipeline.json").string();
  const auto cfg = read_json_file(json_path);
  const auto& comp = cfg.at("components");
  const auto part = [&](const std::string& name) { return (fs::path(folder) / name).string(); };
  const std::string base = fs::path(folder).filename().string();
  torch::NoGradGuard no_grad;
  Models m;
  auto sd = load_reference_pipeline(folder, comp, rec.target());
  m.unet = sd->unet;
  m.net = ControlNetModel(ControlNetModelImpl::load(part(comp.at("controlnet").get<std::string>())));
  m.net->to(rec.target().device, rec.target().dtype);

  rec.set_component(base + "/model");
  check_forward_cases(m, part("cases.safetensors"), rec);
  rec.set_component(base + "/per_pixel");
  check_per_pixel_cases(m, part("per_pixel_scale.safetensors"), rec);
  rec.set_component(base + "/pipeline");
  check_pipeline_runs(*sd, m, cfg, folder, rec);
  rec.set_component(base + "/canny");
  check_canny(part("canny"), rec);
  rec.set_component(base);
}

}  // namespace collage::parity
