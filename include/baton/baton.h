/* baton: pipeline-parallel training in C.  Umbrella header. */
#ifndef BATON_BATON_H
#define BATON_BATON_H

#include "baton/export.h"
#include "baton/status.h"
#include "baton/plan.h"
#include "baton/skip.h"
#include "baton/graph.h"
#include "baton/sim.h"
#include "baton/schedule.h"
#include "baton/timeline.h"
#include "baton/runtime.h"
#include "baton/pipeline.h"
#include "baton/safetensors.h"
#include "baton/model.h"
#include "baton/version.h"

#endif /* BATON_BATON_H */
