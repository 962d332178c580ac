#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <iterator>

#include "models/attention.h"
#include "parity/parity.h"

namespace collage {
namespace {

// The plain autograd graph the blockwise attention replaces (also the COLLAGE_ATTENTION_GRADIENTS=graph path).
at::Tensor plain_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  return graph_attention(q, k, v, scale);
}

struct Grads {
  at::Tensor out, dq, dk, dv;
};

template <class F>
Grads run(F&& attention, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& d_out) {
  auto qq = q.clone().requires_grad_(), kk = k.clone().requires_grad_(), vv = v.clone().requires_grad_();
  auto out = attention(qq, kk, vv);
  out.backward(d_out);
  return {out.detach(), qq.grad(), kk.grad(), vv.grad()};
}

// Training and textual inversion take their gradients through this function: its output and the gradients
// of q, k and v must be the plain graph's, whatever the block split (whole heads per block, several rows of
// one head per block with a remainder, one row per block).
TEST(BlockwiseAttention, OutputAndGradientsMatchThePlainGraph) {
  torch::manual_seed(5);
  const int64_t B = 2, H = 3, Nq = 37, Nk = 11, D = 4, Dv = 5;
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto q = at::randn({B, H, Nq, D}, opts), k = at::randn({B, H, Nk, D}, opts), v = at::randn({B, H, Nk, Dv}, opts);
  auto d_out = at::randn({B, H, Nq, Dv}, opts);
  const double scale = 0.7;
  const auto want = run([&](auto& a, auto& b, auto& c) { return plain_attention(a, b, c, scale); }, q, k, v, d_out);
  // budgets: all heads in one block; two heads per block (the last block holds one); 4 rows per block of one
  // head (37 = 9 x 4 + 1); one row per block
  for (int64_t budget : {int64_t(1) << 20, 2 * Nq * Nk, 4 * Nk, int64_t(1)}) {
    const auto got =
        run([&](auto& a, auto& b, auto& c) { return blockwise_attention(a, b, c, scale, budget); }, q, k, v, d_out);
    EXPECT_TRUE(at::allclose(got.out, want.out, 1e-10, 1e-12)) << "output, budget " << budget;
    EXPECT_TRUE(at::allclose(got.dq, want.dq, 1e-10, 1e-12)) << "dq, budget " << budget;
    EXPECT_TRUE(at::allclose(got.dk, want.dk, 1e-10, 1e-12)) << "dk, budget " << budget;
    EXPECT_TRUE(at::allclose(got.dv, want.dv, 1e-10, 1e-12)) << "dv, budget " << budget;
  }
}

// Large scores (a sharp softmax) must not overflow: the saved log-sum-exp keeps the recomputed
// probabilities in range. Also checks float32 (the training dtype) and non-contiguous inputs, as the
// attention layers pass them.
TEST(BlockwiseAttention, SharpSoftmaxInFloat32) {
  torch::manual_seed(6);
  auto q = at::randn({2, 9, 2, 8}).transpose(1, 2) * 6;  // (B, H, N, D) view of a (B, N, H, D) tensor
  auto k = at::randn({2, 9, 2, 8}).transpose(1, 2) * 6;
  auto v = at::randn({2, 2, 9, 8});
  auto d_out = at::randn({2, 2, 9, 8});
  const double scale = 1.0 / std::sqrt(8.0);
  const auto want = run([&](auto& a, auto& b, auto& c) { return plain_attention(a, b, c, scale); }, q, k, v, d_out);
  const auto got =
      run([&](auto& a, auto& b, auto& c) { return blockwise_attention(a, b, c, scale, 20); }, q, k, v, d_out);
  for (const auto* t : {&got.out, &got.dq, &got.dk, &got.dv}) ASSERT_TRUE(at::isfinite(*t).all().item<bool>());
  EXPECT_TRUE(at::allclose(got.out, want.out, 1e-4, 1e-5));
  EXPECT_TRUE(at::allclose(got.dq, want.dq, 1e-3, 1e-3));
  EXPECT_TRUE(at::allclose(got.dk, want.dk, 1e-3, 1e-3));
  EXPECT_TRUE(at::allclose(got.dv, want.dv, 1e-4, 1e-5));
}

// Half-precision inputs (textual inversion with --dtype bfloat16 / float16) are computed in float32 inside:
// the result and gradients are those of the float32 graph on the same rounded inputs, to the output's
// rounding, and keep the inputs' dtype.
TEST(BlockwiseAttention, HalfPrecisionInputsComputeInFloat) {
  torch::manual_seed(7);
  auto q = at::randn({1, 2, 19, 8}).to(at::kBFloat16), k = at::randn({1, 2, 13, 8}).to(at::kBFloat16);
  auto v = at::randn({1, 2, 13, 8}).to(at::kBFloat16), d_out = at::randn({1, 2, 19, 8}).to(at::kBFloat16);
  const auto want = run([&](auto& a, auto& b, auto& c) { return plain_attention(a, b, c, 0.35); },
                        q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), d_out.to(at::kFloat));
  const auto got =
      run([&](auto& a, auto& b, auto& c) { return blockwise_attention(a, b, c, 0.35, 3 * 13); }, q, k, v, d_out);
  for (const auto* t : {&got.out, &got.dq, &got.dk, &got.dv}) EXPECT_EQ(t->scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::allclose(got.out.to(at::kFloat), want.out, 1e-2, 1e-2));
  EXPECT_TRUE(at::allclose(got.dq.to(at::kFloat), want.dq, 1e-2, 1e-2));
  EXPECT_TRUE(at::allclose(got.dk.to(at::kFloat), want.dk, 1e-2, 1e-2));
  EXPECT_TRUE(at::allclose(got.dv.to(at::kFloat), want.dv, 1e-2, 1e-2));
}

// chunked_attention hands over to the blockwise path when a gradient is wanted, and stays a plain
// no-graph computation otherwise (inference).
TEST(BlockwiseAttention, ChunkedAttentionUsesItOnlyUnderGrad) {
  auto q = at::randn({1, 2, 6, 4}), k = at::randn({1, 2, 5, 4}), v = at::randn({1, 2, 5, 4});
  {
    torch::NoGradGuard no_grad;
    EXPECT_FALSE(chunked_attention(q, k, v, 0.5).requires_grad());
  }
  auto qq = q.clone().requires_grad_();
  auto out = chunked_attention(qq, k, v, 0.5);
  ASSERT_TRUE(out.requires_grad());
  ASSERT_EQ(out.grad_fn()->name(), "ViewBackward0");  // (B, H, N, D) view of the (B * H, N, D) result
  const auto inner = out.grad_fn()->next_edges().at(0).function->name();
  EXPECT_NE(inner.find("BlockwiseAttention"), std::string::npos) << inner;
  EXPECT_TRUE(at::allclose(out, plain_attention(q, k, v, 0.5), 1e-5, 1e-6));
}

// The comparison the device check runs before training on a GPU (and `collage bench attention`): it times both
// paths and reports differences at the level of the arithmetic (float64 here), not zero and not garbage.
TEST(BlockwiseAttention, GradientCheckReportsAgreement) {
  const auto r = parity::check_attention_gradients(2, 3, 40, 24, 8, at::TensorOptions().dtype(at::kDouble), 1);
  for (double d : r.difference) {
    EXPECT_LT(d, 1e-12);
    EXPECT_GE(d, 0.0);
  }
  EXPECT_EQ(r.worst, *std::max_element(std::begin(r.difference), std::end(r.difference)));
  EXPECT_GT(r.graph_seconds, 0.0);
  EXPECT_GT(r.blockwise_seconds, 0.0);
  EXPECT_GT(r.blockwise_peak_bytes, 0.0);  // CPU: peak resident memory is measured
  EXPECT_NE(r.summary().find("dk"), std::string::npos);
}

}  // namespace
}  // namespace collage
