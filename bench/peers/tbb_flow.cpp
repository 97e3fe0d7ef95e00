// oneTBB flow-graph peer of `baton-bench overhead`: one
// continue_node<continue_msg> per DAG task, one make_edge per DAG edge; a
// run is try_put(continue_msg) to every root + graph::wait_for_all().
// continue_nodes re-arm themselves after firing, so one graph serves all
// runs.  Worker count: tbb::global_control max_allowed_parallelism = T (the
// thread calling wait_for_all takes part, so T threads in all).
#include <tbb/flow_graph.h>
#include <tbb/global_control.h>

#include <memory>
#include <vector>

#include "common.h"

namespace {

using node_t = tbb::flow::continue_node<tbb::flow::continue_msg>;

struct flow_dag {
  std::unique_ptr<tbb::flow::graph> g;
  std::vector<std::unique_ptr<node_t>> nodes;
  std::vector<node_t *> roots;

  void build(const bt_shape &s) {
    g.reset(new tbb::flow::graph);
    nodes.reserve((size_t)s.tasks);
    for (int32_t t = 0; t < s.tasks; t++)
      nodes.emplace_back(new node_t(*g, [t](const tbb::flow::continue_msg &) {
        pr_task_body(t);
        return tbb::flow::continue_msg();
      }));
    for (int32_t i = 0; i < s.edges; i++)
      tbb::flow::make_edge(*nodes[(size_t)s.src[i]], *nodes[(size_t)s.dst[i]]);
    for (int32_t t = 0; t < s.tasks; t++)
      if (s.pred_first[t + 1] == s.pred_first[t])
        roots.push_back(nodes[(size_t)t].get());
  }

  void run() {
    for (node_t *r : roots)
      r->try_put(tbb::flow::continue_msg());
    g->wait_for_all();
  }

  void destroy() {
    roots.clear();
    nodes.clear();  // nodes before their graph
    g.reset();
  }
};

}  // namespace

int main(int argc, char **argv) {
  struct pr_args a;
  pr_init(argc, argv, &a);
  tbb::global_control gc(tbb::global_control::max_allowed_parallelism,
                         (size_t)a.threads);

  std::vector<int64_t> build(a.repeat), run(a.repeat);
  for (int r = 0; r < a.repeat; r++) {
    flow_dag d;
    int64_t t0 = pr_now_ns();
    d.build(pr_shape);
    build[r] = pr_now_ns() - t0;
    d.destroy();
  }

  flow_dag d;
  d.build(pr_shape);
  for (int r = -2; r < a.repeat; r++) {
    pr_reset_done();
    int64_t t0 = pr_now_ns();
    d.run();
    int64_t dt = pr_now_ns() - t0;
    if (r >= 0)
      run[r] = dt;
    pr_check_all_done();
  }
  d.destroy();

  int rc = pr_report(&a, "tbb", pr_median(build.data(), a.repeat),
                     pr_median(run.data(), a.repeat), nullptr);
  pr_fini();
  return rc;
}
