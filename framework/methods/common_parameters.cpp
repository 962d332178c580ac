// "common": the parameters every method accepts. Not a component users name; it has no hooks.
#include "methods/builtin_components.h"

namespace collage {

namespace {

class CommonParameters : public Component {
 public:
  CommonParameters()
      : Component({"common", false, "parameters every method accepts",
                   {{"strength", "number", 0.8,
                     "global strength b: fraction of the schedule run on the collage (SDEdit); also the LN strength "
                     "outside all layers",
                     true, ParamRange{0, 1, true}}}}) {}
};

}  // namespace

COLLAGE_REGISTER_COMPONENT(CommonParameters)

}  // namespace collage
