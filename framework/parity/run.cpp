#include <filesystem>

#include "core/core.h"
#include "parity/nets_parity.h"
#include "parity/parity.h"

namespace fs = std::filesystem;

namespace collage::parity {

namespace {
std::function<bool(const std::string&)> name_starts_with(const std::string& prefix) {
  return [prefix](const std::string& folder) {
    return fs::path(folder).filename().string().rfind(prefix, 0) == 0;
  };
}
}  // namespace

std::vector<ComponentChecker> builtin_checkers() {
  std::vector<ComponentChecker> checkers = {
      {"tokenizer", name_starts_with("tokenizer"), check_tokenizer},
      {"text_encoder", name_starts_with("text_encoder"), check_text_encoder},
      {"unet", name_starts_with("unet"), check_unet},
      {"vae", name_starts_with("vae"), check_vae},
      {"schedulers", name_starts_with("schedulers"), check_schedulers},
      {"pipeline", name_starts_with("pipeline"), check_pipeline},
      {"controlnet", name_starts_with("controlnet"), check_controlnet},
  };
  for (auto& c : metric_net_checkers()) checkers.push_back(std::move(c));  // clip_vision*, clip*, lpips*
  return checkers;
}

std::vector<CaseResult> run_parity(const std::string& root, const std::function<void(const std::string&)>& progress,
                                   const Target& target) {
  COLLAGE_CHECK_AT(fs::is_directory(root), root, "", "reference folder not found");
  std::vector<std::string> folders;
  for (const auto& entry : fs::directory_iterator(root))
    if (entry.is_directory()) folders.push_back(entry.path().string());
  std::sort(folders.begin(), folders.end());
  std::vector<CaseResult> all;
  const auto checkers = builtin_checkers();
  for (const auto& folder : folders) {
    bool claimed = false;
    for (const auto& checker : checkers) {
      if (!checker.claims(folder)) continue;
      claimed = true;
      if (progress) progress(folder);
      Recorder rec(fs::path(folder).filename().string(), target);
      try {
        checker.check(folder, rec);
      } catch (const std::exception& e) {
        rec.failure("(checker)", e.what());
      }
      if (rec.results().empty()) rec.failure("(checker)", "no case found in this folder");
      auto results = rec.take();
      all.insert(all.end(), results.begin(), results.end());
      break;
    }
    if (!claimed) {  // listed, never skipped silently (a new reference folder needs a checker)
      CaseResult r;
      r.component = fs::path(folder).filename().string();
      r.name = "(unknown folder, not checked)";
      r.pass = true;
      r.skipped = true;
      r.detail = "no checker claims this folder";
      all.push_back(std::move(r));
    }
  }
  return all;
}

}  // namespace collage::parity
