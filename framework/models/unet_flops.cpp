#include "models/unet_2d_condition.h"

namespace collage {

namespace {
struct Counter {
  double flops = 0;
  int64_t batch = 1;
  void conv(int64_t cin, int64_t cout, int64_t k, int64_t h, int64_t w) {
    flops += 2.0 * cin * cout * k * k * h * w * batch;
  }
  void linear(int64_t in, int64_t out, int64_t tokens) { flops += 2.0 * in * out * tokens * batch; }
  void attention(int64_t n, int64_t m, int64_t inner) { flops += 4.0 * n * m * inner * batch; }
  void resnet(int64_t cin, int64_t cout, int64_t temb, int64_t h, int64_t w) {
    conv(cin, cout, 3, h, w);
    conv(cout, cout, 3, h, w);
    linear(temb, cout, 1);
    if (cin != cout) conv(cin, cout, 1, h, w);
  }
  void transformer(const UNet2DConditionConfig& c, int64_t ch, int64_t layers, int64_t h, int64_t w, int64_t tokens) {
    const int64_t n = h * w;
    if (c.use_linear_projection) linear(ch, ch, n); else conv(ch, ch, 1, h, w);  // proj_in
    for (int64_t l = 0; l < layers; ++l) {
      linear(ch, 3 * ch, n);  // attn1 q, k, v
      attention(n, n, ch);
      linear(ch, ch, n);      // attn1 out
      linear(ch, ch, n);      // attn2 q
      linear(c.cross_attention_dim, 2 * ch, tokens);  // attn2 k, v
      attention(n, tokens, ch);
      linear(ch, ch, n);      // attn2 out
      linear(ch, 8 * ch, n);  // GEGLU proj (2 x 4ch)
      linear(4 * ch, ch, n);  // ff out
    }
    if (c.use_linear_projection) linear(ch, ch, n); else conv(ch, ch, 1, h, w);  // proj_out
  }
};
}  // namespace

double unet_flops(const UNet2DConditionConfig& c, int64_t batch, int64_t height, int64_t width, int64_t tokens) {
  Counter k;
  k.batch = batch;
  const auto& ch = c.block_out_channels;
  const int64_t n = c.num_blocks();
  const int64_t temb = ch[0] * 4;
  k.linear(ch[0], temb, 1);
  k.linear(temb, temb, 1);
  int64_t h = height, w = width;
  k.conv(c.in_channels, ch[0], c.conv_in_kernel, h, w);
  std::vector<std::pair<int64_t, int64_t>> sizes;  // resolution per block
  int64_t out = ch[0];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t in = out;
    out = ch[i];
    sizes.push_back({h, w});
    for (int64_t l = 0; l < c.layers_for_block(i); ++l) {
      k.resnet(l == 0 ? in : out, out, temb, h, w);
      if (c.down_block_types[i] == "CrossAttnDownBlock2D")
        k.transformer(c, out, c.transformer_layers_for_block(i), h, w, tokens);
    }
    if (i != n - 1) {
      h = (h + 1) / 2;
      w = (w + 1) / 2;
      k.conv(out, out, 3, h, w);
    }
  }
  k.resnet(ch[n - 1], ch[n - 1], temb, h, w);
  k.transformer(c, ch[n - 1], c.transformer_layers_for_block(n - 1), h, w, tokens);
  k.resnet(ch[n - 1], ch[n - 1], temb, h, w);
  out = ch[n - 1];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t block = n - 1 - i;
    const int64_t prev = out;
    out = ch[block];
    const int64_t in = ch[std::max<int64_t>(n - 2 - i, 0)];
    const int64_t layers = c.layers_for_block(block) + 1;
    for (int64_t l = 0; l < layers; ++l) {
      const int64_t skip = (l == layers - 1) ? in : out;
      k.resnet((l == 0 ? prev : out) + skip, out, temb, h, w);
      if (c.up_block_types[i] == "CrossAttnUpBlock2D")
        k.transformer(c, out, c.transformer_layers_for_block(block), h, w, tokens);
    }
    if (i != n - 1) {
      h = sizes[block - 1].first;
      w = sizes[block - 1].second;
      k.conv(out, out, 3, h, w);
    }
  }
  k.conv(ch[0], c.out_channels, c.conv_out_kernel, h, w);
  return k.flops;
}

}  // namespace collage
