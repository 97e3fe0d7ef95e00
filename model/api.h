/* baton: the public model API's private state (internal), shared by api.c
 * (the API and resmlp) and api_gpt.c (gpt). */
#ifndef BATON_MODEL_API_H
#define BATON_MODEL_API_H

#include <stdint.h>

#include "baton/model.h"
#include "gpt.h"
#include "gpt_train.h"
#include "resmlp.h"
#include "train.h"

#define LAYER_NAME_MAX 24

/* The first version of the trainer config ends at `trace`: what a caller's
 * size must cover; later fields read as zero when it is shorter. */
#define TRAINER_CONFIG_V1_SIZE                                                \
  (offsetof(bt_trainer_config_t, trace) + sizeof(int32_t))

enum { BT__MODEL_RESMLP, BT__MODEL_GPT };

struct bt_model {
  int kind;                /* BT__MODEL_* */
  struct bt__resmlp *m;    /* resmlp, else NULL */
  struct bt__gpt *g;       /* gpt, else NULL */
  struct bt__params *tbl;  /* the model's parameter table */
  char (*layer_names)[LAYER_NAME_MAX]; /* [nlayers] */
};

struct bt_trainer {
  bt_model_t *model;         /* borrowed */
  struct bt__train *t;       /* resmlp */
  struct bt__gpt_train *gt;  /* gpt */
  bt_trainer_config_t cfg;   /* copy; balance and schedule cleared (they
                                are the caller's, read during create) */
  int32_t S;
  int32_t *stage_layers;     /* [S] */
  int64_t updates;           /* optimizer steps taken */
  uint32_t steps;            /* gpt: steps run (the dropout key) */
  struct bt__params_adamw_state adam; /* allocated at the first AdamW step */
};

/* Names the layers FIRST, blk0 .., head.  BT_ENOMEM. */
bt_status bt__api_name_layers(bt_model_t *model, const char *first,
                              bt_error_t *err);

/* The cheapest-bottleneck contiguous partition of n layer costs into S
 * stages (api.c). */
bt_status bt__api_partition_by_cost(const double *cost, size_t n, int32_t S,
                                    int32_t *balance, bt_error_t *err);

/* gpt (api_gpt.c): each layer's cost for balancing, and the trainer. */
bt_status bt__api_gpt_layer_costs(const struct bt__gpt *g,
                                  const bt_trainer_config_t *c, double *cost,
                                  bt_error_t *err);
bt_status bt__api_gpt_trainer_create(bt_trainer_t *tr,
                                     const bt_trainer_config_t *c, int32_t v,
                                     const int32_t *balance, int32_t nbalance,
                                     bt_error_t *err);

#endif /* BATON_MODEL_API_H */
