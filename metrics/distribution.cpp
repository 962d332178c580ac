// Set-level metrics on feature matrices: KID (Binkowski et al. 2018) and FID (Heusel et al. 2017).
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <Eigen/Dense>
#include <cmath>
#include <numeric>
#include <random>

#include "core/core.h"
#include "metrics/metrics.h"
#include "metrics/metrics_internal.h"

namespace collage::metrics {

namespace {

at::Tensor checked_features(const at::Tensor& t, const char* which) {
  COLLAGE_CHECK(t.defined() && t.dim() == 2, "feature set {}: expected an (N, D) matrix, got {}", which,
                t.defined() ? fmt::format("[{}]", fmt::join(t.sizes(), ", ")) : std::string("nothing"));
  COLLAGE_CHECK(at::isFloatingType(t.scalar_type()), "feature set {}: expected floating-point features", which);
  auto d = t.detach().to(at::kCPU, at::kDouble).contiguous();
  COLLAGE_CHECK(at::isfinite(d).all().item<bool>(), "feature set {}: contains NaN or infinite values", which);
  return d;
}

void check_pair(const at::Tensor& a, const at::Tensor& b) {
  COLLAGE_CHECK(a.size(1) == b.size(1), "feature sets have different dimensions: {} and {}", a.size(1), b.size(1));
  COLLAGE_CHECK(a.size(1) > 0, "feature sets have zero dimensions");
}

// A uniform integer in [0, n) from a 64-bit engine, by rejection (the same numbers on every standard
// library, unlike std::uniform_int_distribution).
uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
  uint64_t r;
  do r = rng();
  while (r >= limit);
  return r % n;
}

// m distinct indices in [0, n), uniformly (partial Fisher-Yates on a persistent permutation).
at::Tensor sample_without_replacement(std::vector<int64_t>& perm, int64_t m, std::mt19937_64& rng) {
  const int64_t n = static_cast<int64_t>(perm.size());
  for (int64_t i = 0; i < m; ++i) {
    const int64_t j = i + static_cast<int64_t>(uniform_below(rng, static_cast<uint64_t>(n - i)));
    std::swap(perm[i], perm[j]);
  }
  return at::tensor(std::vector<int64_t>(perm.begin(), perm.begin() + m), at::kLong);
}

using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

MatrixD to_eigen(const at::Tensor& t) { return Eigen::Map<const MatrixD>(t.data_ptr<double>(), t.size(0), t.size(1)); }

// Symmetric PSD square root through the eigendecomposition; negative eigenvalues (round-off of a
// singular matrix) are treated as zero.
Eigen::MatrixXd sqrt_psd(const Eigen::MatrixXd& s) {
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(s);
  COLLAGE_CHECK(eig.info() == Eigen::Success, "fid: eigendecomposition failed");
  Eigen::VectorXd root = eig.eigenvalues().cwiseMax(0.0).cwiseSqrt();
  return eig.eigenvectors() * root.asDiagonal() * eig.eigenvectors().transpose();
}

}  // namespace

SetValue kid(const at::Tensor& a_in, const at::Tensor& b_in, const KidOptions& options) {
  auto a = checked_features(a_in, "a"), b = checked_features(b_in, "b");
  check_pair(a, b);
  COLLAGE_CHECK(options.subset_size >= 2, "kid: subset_size must be at least 2, got {}", options.subset_size);
  COLLAGE_CHECK(options.subsets >= 1, "kid: subsets must be at least 1, got {}", options.subsets);
  const int64_t m = std::min({options.subset_size, a.size(0), b.size(0)});
  COLLAGE_CHECK(m >= 2, "kid: each feature set needs at least 2 rows (got {} and {})", a.size(0), b.size(0));
  const double D = static_cast<double>(a.size(1));

  std::mt19937_64 rng(options.seed);
  std::vector<int64_t> perm_a(a.size(0)), perm_b(b.size(0));
  std::iota(perm_a.begin(), perm_a.end(), 0);
  std::iota(perm_b.begin(), perm_b.end(), 0);
  // Sums of k(x, y) = (x.y / D + 1)^3 over all pairs and over the diagonal. The two m x m buffers are
  // reused across subsets: fresh multi-megabyte tensors per subset cost more in page faults than the
  // arithmetic.
  auto gram = at::empty({m, m}, at::kDouble), cube = at::empty({m, m}, at::kDouble);
  auto kernel_sums = [&](const at::Tensor& x, const at::Tensor& y, double* trace) {
    at::mm_out(gram, x, y.t());
    gram.div_(D).add_(1.0);
    cube.copy_(gram).mul_(gram).mul_(gram);
    if (trace) *trace = cube.diagonal().sum().item<double>();
    return cube.sum().item<double>();
  };

  std::vector<double> values;
  values.reserve(options.subsets);
  const double md = static_cast<double>(m);
  for (int64_t s = 0; s < options.subsets; ++s) {
    auto x = a.index_select(0, sample_without_replacement(perm_a, m, rng));
    auto y = b.index_select(0, sample_without_replacement(perm_b, m, rng));
    double trace_xx = 0, trace_yy = 0;
    const double sum_xx = kernel_sums(x, x, &trace_xx), sum_yy = kernel_sums(y, y, &trace_yy);
    const double sum_xy = kernel_sums(x, y, nullptr);
    const double within = (sum_xx - trace_xx + sum_yy - trace_yy) / (md * (md - 1.0));
    values.push_back(within - 2.0 * sum_xy / (md * md));
  }
  const double mean = std::accumulate(values.begin(), values.end(), 0.0) / values.size();
  double var = 0;
  for (double v : values) var += (v - mean) * (v - mean);
  return {mean, std::sqrt(var / values.size()), options.subsets};
}

double fid(const at::Tensor& a_in, const at::Tensor& b_in) {
  auto a = checked_features(a_in, "a"), b = checked_features(b_in, "b");
  check_pair(a, b);
  COLLAGE_CHECK(a.size(0) >= 2 && b.size(0) >= 2, "fid: each feature set needs at least 2 rows (got {} and {})",
                a.size(0), b.size(0));
  const MatrixD A = to_eigen(a), B = to_eigen(b);
  const Eigen::RowVectorXd mu_a = A.colwise().mean(), mu_b = B.colwise().mean();
  const MatrixD Ac = A.rowwise() - mu_a, Bc = B.rowwise() - mu_b;
  const Eigen::MatrixXd Sa = (Ac.transpose() * Ac) / double(A.rows() - 1);
  const Eigen::MatrixXd Sb = (Bc.transpose() * Bc) / double(B.rows() - 1);

  // Tr((Sa^1/2 Sb Sa^1/2)^1/2) = Tr((Sa Sb)^1/2), through symmetric matrices only.
  const Eigen::MatrixXd root_a = sqrt_psd(Sa);
  Eigen::MatrixXd M = root_a * Sb * root_a;
  M = 0.5 * (M + M.transpose());
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(M, Eigen::EigenvaluesOnly);
  COLLAGE_CHECK(eig.info() == Eigen::Success, "fid: eigendecomposition failed");
  const double tr_covmean = eig.eigenvalues().cwiseMax(0.0).cwiseSqrt().sum();
  return (mu_a - mu_b).squaredNorm() + Sa.trace() + Sb.trace() - 2.0 * tr_covmean;
}

namespace detail {
namespace {

class KidMetric : public SetMetric {
 public:
  explicit KidMetric(KidOptions o) : options_(o) {}
  SetValue compute(const at::Tensor& a, const at::Tensor& b) override { return kid(a, b, options_); }

 private:
  KidOptions options_;
};

class FidMetric : public SetMetric {
 public:
  SetValue compute(const at::Tensor& a, const at::Tensor& b) override { return {fid(a, b), 0.0, 1}; }
};

}  // namespace

std::unique_ptr<SetMetric> make_kid(const Json& options) {
  Options o(options, "metric 'kid' options");
  KidOptions k;
  k.subset_size = o.get<int64_t>("subset_size", k.subset_size);
  k.subsets = o.get<int64_t>("subsets", k.subsets);
  k.seed = o.get<uint64_t>("seed", k.seed);
  o.finish();
  COLLAGE_CHECK_AT(k.subset_size >= 2, "metric 'kid' options", "subset_size", "must be at least 2, got {}",
                   k.subset_size);
  COLLAGE_CHECK_AT(k.subsets >= 1, "metric 'kid' options", "subsets", "must be at least 1, got {}", k.subsets);
  return std::make_unique<KidMetric>(k);
}

std::unique_ptr<SetMetric> make_fid(const Json& options) {
  Options(options, "metric 'fid' options").finish();
  return std::make_unique<FidMetric>();
}

}  // namespace detail
}  // namespace collage::metrics
