// The built-in method components (one file each) and the hook of the plugins compiled in. Private to methods/.
#pragma once

#include "methods/methods.h"

namespace collage {

// In registry order: the order is part of every run id (spec texts list modifiers in it), so append, never reorder.
#define COLLAGE_BUILTIN_COMPONENTS(X) \
  X(CommonParameters)                 \
  X(FlattenBase)                      \
  X(Txt2ImgBase)                      \
  X(SdeditBase)                       \
  X(EditBase)                         \
  X(DifferentialBase)                 \
  X(RegionalBase)                     \
  X(CrossAttentionModifier)           \
  X(PaintWithWordsModifier)           \
  X(TextualInversionModifier)         \
  X(LayerNoiseModifier)               \
  X(ControlNetModifier)

#define COLLAGE_DECLARE_REGISTER(Class) void collage_register_component_##Class(ComponentRegistry& registry);
COLLAGE_BUILTIN_COMPONENTS(COLLAGE_DECLARE_REGISTER)
#undef COLLAGE_DECLARE_REGISTER

void register_builtin_components(ComponentRegistry& registry);

// Shared by the built-in components: the collage layers' own noise strengths.
std::vector<double> layer_noise_strengths(const Collage& collage);

}  // namespace collage

// Defined in the build's generated file (CMake, COLLAGE_PLUGIN_DIRS): registers every plugin compiled in.
void collage_register_plugin_components(::collage::ComponentRegistry& registry);
