/* Timeline writers: Chrome trace JSON and SVG. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/timeline.h"
#include "test.h"

/* ---- fixtures --------------------------------------------------------- */

static bt_action_t
act(int32_t stage, int32_t kind, int32_t mb)
{
  bt_action_t a = {stage, kind, mb};
  return a;
}

/* 2 devices, 2 microbatches, one stage per device, unit 1 ms:
 *   device 0: 0F0 [0,1) 0F1 [1,2) ....... 0B0 [5,7) 0B1 [7,9)
 *   device 1: ... 1F0 [1,2) 1F1 [2,3) 1B0 [3,5) 1B1 [5,7)
 * plus an IDLE slice the writers must leave out. */
static const bt_slice_t fb_slices[] = {
    {{0, BT_ACT_F, 0}, 0, 0, 1},  {{0, BT_ACT_F, 1}, 0, 1, 2},
    {{1, BT_ACT_F, 0}, 1, 1, 2},  {{1, BT_ACT_F, 1}, 1, 2, 3},
    {{1, BT_ACT_B, 0}, 1, 3, 5},  {{-1, BT_ACT_IDLE, -1}, 0, 2, 5},
    {{0, BT_ACT_B, 0}, 0, 5, 7},  {{1, BT_ACT_B, 1}, 1, 5, 7},
    {{0, BT_ACT_B, 1}, 0, 7, 9},
};
#define FB_COUNT (sizeof fb_slices / sizeof fb_slices[0])
#define FB_DRAWN (FB_COUNT - 1)

/* Same work with split backward, makespan 4 (half the one above). */
static const bt_slice_t iw_slices[] = {
    {{0, BT_ACT_F, 0}, 0, 0, 0.5},   {{1, BT_ACT_F, 0}, 1, 0.5, 1},
    {{1, BT_ACT_I, 0}, 1, 1, 1.5},   {{0, BT_ACT_I, 0}, 0, 1.5, 2},
    {{1, BT_ACT_W, 0}, 1, 1.5, 2},   {{0, BT_ACT_W, 0}, 0, 2, 4},
};
#define IW_COUNT (sizeof iw_slices / sizeof iw_slices[0])

static const char *const gpu_names[] = {"gpu<0>", "gpu \"1\""};

static bt_timeline_t
fb_timeline(void)
{
  bt_timeline_t tl = BT_TIMELINE_INIT;

  tl.title = "a\"b<c>&";
  tl.devices = 2;
  tl.stages = 2;
  tl.slices = fb_slices;
  tl.count = FB_COUNT;
  return tl;
}

static bt_timeline_t
iw_timeline(void)
{
  bt_timeline_t tl = BT_TIMELINE_INIT;

  tl.title = "split";
  tl.subtitle = "makespan 4";
  tl.devices = 2;
  tl.stages = 2;
  tl.slices = iw_slices;
  tl.count = IW_COUNT;
  tl.device_names = gpu_names;
  return tl;
}

/* test.h's EXPECT_STATUS tests its error pointer for NULL; gcc warns
 * (-Waddress) when that pointer is written as &err, so pass it through. */
static const bt_error_t *
detail(const bt_error_t *err)
{
  return err;
}

typedef bt_status (*writer_fn)(FILE *, const bt_timeline_t *, size_t,
                               bt_error_t *);

/* Runs a writer into memory; returns the NUL-terminated text (free it), or
 * NULL when the writer failed (its status in *rc). */
static char *
render(writer_fn write, const bt_timeline_t *tl, size_t count, bt_status *rc,
       bt_error_t *err)
{
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);

  if (f == NULL)
    return NULL;
  *rc = write(f, tl, count, err);
  fclose(f);
  if (*rc != BT_OK) {
    free(buf);
    return NULL;
  }
  return buf;
}

static size_t
count_of(const char *hay, const char *needle)
{
  size_t n = 0;

  for (const char *p = strstr(hay, needle); p != NULL;
       p = strstr(p + strlen(needle), needle))
    n++;
  return n;
}

/* ---- a minimal JSON validator (RFC 8259 grammar, no semantics) -------- */

static void
skip_ws(const char **p)
{
  while (**p == ' ' || **p == '\n' || **p == '\r' || **p == '\t')
    (*p)++;
}

static bool json_value(const char **p, int depth);

static bool
json_string(const char **p)
{
  if (**p != '"')
    return false;
  for ((*p)++; **p != '"'; (*p)++) {
    unsigned char c = (unsigned char)**p;
    if (c < 0x20)
      return false; /* also catches the end of the text */
    if (c != '\\')
      continue;
    (*p)++;
    if (**p == 'u') {
      for (int i = 1; i <= 4; i++)
        if (!strchr("0123456789abcdefABCDEF", (*p)[i]) || (*p)[i] == '\0')
          return false;
      *p += 4;
    } else if (**p == '\0' || !strchr("\"\\/bfnrt", **p)) {
      return false;
    }
  }
  (*p)++;
  return true;
}

static bool
json_digits(const char **p)
{
  const char *start = *p;

  while (**p >= '0' && **p <= '9')
    (*p)++;
  return *p > start;
}

static bool
json_number(const char **p)
{
  if (**p == '-')
    (*p)++;
  if (**p == '0')
    (*p)++;
  else if (!json_digits(p))
    return false;
  if (**p == '.') {
    (*p)++;
    if (!json_digits(p))
      return false;
  }
  if (**p == 'e' || **p == 'E') {
    (*p)++;
    if (**p == '+' || **p == '-')
      (*p)++;
    if (!json_digits(p))
      return false;
  }
  return true;
}

/* Object (close '}') or array (close ']'): comma-separated members. */
static bool
json_container(const char **p, char close, int depth)
{
  (*p)++;
  skip_ws(p);
  if (**p == close) {
    (*p)++;
    return true;
  }
  for (;;) {
    if (close == '}') {
      if (!json_string(p))
        return false;
      skip_ws(p);
      if (**p != ':')
        return false;
      (*p)++;
    }
    if (!json_value(p, depth + 1))
      return false;
    skip_ws(p);
    if (**p == close) {
      (*p)++;
      return true;
    }
    if (**p != ',')
      return false;
    (*p)++;
    skip_ws(p);
  }
}

static bool
json_value(const char **p, int depth)
{
  if (depth > 64)
    return false;
  skip_ws(p);
  switch (**p) {
  case '{':
    return json_container(p, '}', depth);
  case '[':
    return json_container(p, ']', depth);
  case '"':
    return json_string(p);
  case 't':
    return strncmp(*p, "true", 4) == 0 ? (*p += 4, true) : false;
  case 'f':
    return strncmp(*p, "false", 5) == 0 ? (*p += 5, true) : false;
  case 'n':
    return strncmp(*p, "null", 4) == 0 ? (*p += 4, true) : false;
  default:
    return json_number(p);
  }
}

static bool
json_valid(const char *text)
{
  const char *p = text;

  if (!json_value(&p, 0))
    return false;
  skip_ws(&p);
  return *p == '\0';
}

TEST(json_validator_self_check)
{
  EXPECT_TRUE(json_valid("{\"a\":[1,-2.5e3,true,null,\"x\\\"\\u00e9\"]}"));
  EXPECT_TRUE(!json_valid("{\"a\":1,}"));
  EXPECT_TRUE(!json_valid("{\"a\":\"line\nbreak\"}"));
  EXPECT_TRUE(!json_valid("[nan]"));
  EXPECT_TRUE(!json_valid("{\"a\":1}}"));
}

/* ---- Chrome trace ----------------------------------------------------- */

TEST(chrome_events_and_escaping)
{
  bt_timeline_t tl = fb_timeline();
  bt_error_t err = {0};
  bt_status rc = BT_OK;
  char *out = render(bt_timeline_write_chrome, &tl, 1, &rc, &err);

  EXPECT_STATUS(rc, BT_OK, detail(&err));
  ASSERT_TRUE(out != NULL);
  EXPECT_TRUE(json_valid(out));
  EXPECT_INT_EQ(strncmp(out, "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[",
                        39),
                0);
  EXPECT_STR_CONTAINS(out, "\"process_name\",\"ph\":\"M\",\"pid\":1");
  EXPECT_STR_CONTAINS(out, "\"name\":\"a\\\"b<c>&\"");
  EXPECT_STR_CONTAINS(out, "\"process_sort_index\"");
  EXPECT_STR_CONTAINS(out, "\"args\":{\"name\":\"device 0\"}");
  EXPECT_STR_CONTAINS(out, "\"args\":{\"name\":\"device 1\"}");
  EXPECT_INT_EQ(count_of(out, "\"thread_sort_index\""), 2);
  EXPECT_INT_EQ(count_of(out, "\"ph\":\"X\""), FB_DRAWN);
  EXPECT_STR_CONTAINS(out, "\"name\":\"1F0\",\"cat\":\"F\",\"ph\":\"X\","
                           "\"ts\":1000,\"dur\":1000,\"pid\":1,\"tid\":1,"
                           "\"args\":{\"stage\":1,\"microbatch\":0}");
  EXPECT_STR_CONTAINS(out, "\"name\":\"0B1\",\"cat\":\"B\",\"ph\":\"X\","
                           "\"ts\":7000,\"dur\":2000,\"pid\":1,\"tid\":0");
  /* The IDLE slice has no name; no event may have an empty one. */
  EXPECT_TRUE(strstr(out, "\"name\":\"\"") == NULL);
  free(out);
}

TEST(chrome_two_processes_names_and_fractions)
{
  bt_timeline_t tl[2] = {fb_timeline(), iw_timeline()};
  bt_error_t err = {0};
  bt_status rc = BT_OK;
  char *out;

  tl[1].unit_us = 1.0;
  out = render(bt_timeline_write_chrome, tl, 2, &rc, &err);
  EXPECT_STATUS(rc, BT_OK, detail(&err));
  ASSERT_TRUE(out != NULL);
  EXPECT_TRUE(json_valid(out));
  EXPECT_STR_CONTAINS(out, "\"args\":{\"name\":\"split (makespan 4)\"}");
  EXPECT_STR_CONTAINS(out, "\"pid\":2,\"tid\":0,\"args\":{\"sort_index\":1}");
  EXPECT_STR_CONTAINS(out, "\"tid\":0,\"args\":{\"name\":\"gpu<0>\"}");
  EXPECT_STR_CONTAINS(out, "\"args\":{\"name\":\"gpu \\\"1\\\"\"}");
  EXPECT_STR_CONTAINS(out, "\"name\":\"1W0\",\"cat\":\"W\",\"ph\":\"X\","
                           "\"ts\":1.5,\"dur\":0.5,\"pid\":2,\"tid\":1");
  EXPECT_STR_CONTAINS(out, "\"name\":\"1I0\",\"cat\":\"I\"");
  EXPECT_INT_EQ(count_of(out, "\"ph\":\"X\""), FB_DRAWN + IW_COUNT);
  free(out);
}

TEST(chrome_control_characters_escaped)
{
  bt_timeline_t tl = fb_timeline();
  bt_error_t err = {0};
  bt_status rc = BT_OK;
  char *out;

  tl.title = "tab\there\nnew\\line\x01";
  out = render(bt_timeline_write_chrome, &tl, 1, &rc, &err);
  ASSERT_TRUE(out != NULL);
  EXPECT_TRUE(json_valid(out));
  EXPECT_STR_CONTAINS(out, "tab\\there\\nnew\\\\line\\u0001");
  free(out);
}

TEST(chrome_empty_is_valid)
{
  bt_error_t err = {0};
  bt_status rc = BT_OK;
  char *out = render(bt_timeline_write_chrome, NULL, 0, &rc, &err);

  EXPECT_STATUS(rc, BT_OK, detail(&err));
  ASSERT_TRUE(out != NULL);
  EXPECT_TRUE(json_valid(out));
  free(out);
}

/* ---- SVG -------------------------------------------------------------- */

/* Reads attribute `name` of the n-th element that contains `marker`. */
static double
attr_of(const char *svg, const char *marker, size_t n, const char *name)
{
  const char *p = strstr(svg, marker);
  char key[32];

  for (; p != NULL && n > 0; n--)
    p = strstr(p + 1, marker);
  if (p == NULL)
    return NAN;
  snprintf(key, sizeof key, " %s=\"", name);
  p = strstr(p, key);
  return p == NULL ? NAN : strtod(p + strlen(key), NULL);
}

/* The fill of the slice whose tooltip starts with `action`. */
static bool
slice_fill(const char *svg, const char *action, char fill[8])
{
  char key[40];
  const char *p;

  snprintf(key, sizeof key, "<title>%s on", action);
  p = strstr(svg, key);
  if (p == NULL || p - svg < 16)
    return false;
  memcpy(fill, p - 9, 7); /* fill="#rrggbb"> */
  fill[7] = '\0';
  return fill[0] == '#';
}

static bool
ends_with(const char *s, const char *suffix)
{
  size_t n = strlen(s), m = strlen(suffix);

  return n >= m && strcmp(s + n - m, suffix) == 0;
}

TEST(svg_structure)
{
  bt_timeline_t tl = fb_timeline();
  bt_error_t err = {0};
  bt_status rc = BT_OK;
  char *out = render(bt_timeline_write_svg, &tl, 1, &rc, &err);
  const char *svg;

  EXPECT_STATUS(rc, BT_OK, detail(&err));
  ASSERT_TRUE(out != NULL);
  svg = out;
  if (strncmp(svg, "<?xml", 5) == 0)
    svg = strstr(svg, "?>") + 2;
  while (*svg == '\n' || *svg == ' ')
    svg++;
  EXPECT_INT_EQ(strncmp(svg, "<svg", 4), 0);
  EXPECT_TRUE(ends_with(out, "</svg>\n") || ends_with(out, "</svg>"));
  EXPECT_INT_EQ(count_of(out, "class=\"slice\""), FB_DRAWN);
  EXPECT_INT_EQ(count_of(out, "class=\"track\""), 2);
  /* Background, tracks, slices and the F and B legend swatches. */
  EXPECT_INT_EQ(count_of(out, "<rect"), 1 + 2 + FB_DRAWN + 2);
  EXPECT_STR_CONTAINS(out, "a&quot;b&lt;c&gt;&amp;");
  EXPECT_TRUE(strstr(out, "a\"b<c>&") == NULL);
  EXPECT_STR_CONTAINS(out, ">device 0</text>");
  EXPECT_STR_CONTAINS(out, ">device 1</text>");
  EXPECT_STR_CONTAINS(out, "text-anchor=\"middle\">1</text>");
  EXPECT_STR_CONTAINS(out, "<title>1B0 on device 1: 3 to 5 ms</title>");
  EXPECT_STR_CONTAINS(out, "</tspan> forward</text>");
  EXPECT_STR_CONTAINS(out, "</tspan> backward</text>");
  EXPECT_TRUE(strstr(out, "input grad") == NULL);
  EXPECT_TRUE(strstr(out, "weight grad") == NULL);
  EXPECT_STR_CONTAINS(out, "time (ms)");
  free(out);
}

TEST(svg_shared_scale_names_and_legend)
{
  bt_timeline_t tl[2] = {fb_timeline(), iw_timeline()};
  bt_error_t err = {0};
  bt_status rc = BT_OK;
  char *out = render(bt_timeline_write_svg, tl, 2, &rc, &err);
  double w0, w1;

  EXPECT_STATUS(rc, BT_OK, detail(&err));
  ASSERT_TRUE(out != NULL);
  /* Makespans 9 and 4 on one scale: the tracks are 9 : 4. */
  w0 = attr_of(out, "class=\"track\"", 0, "width");
  w1 = attr_of(out, "class=\"track\"", 2, "width");
  EXPECT_NEAR(w0 / w1, 9.0 / 4.0, 1e-3);
  EXPECT_INT_EQ(count_of(out, "class=\"track\""), 4);
  EXPECT_INT_EQ(count_of(out, "class=\"panel\""), 2);
  EXPECT_STR_CONTAINS(out, ">gpu&lt;0&gt;</text>");
  EXPECT_STR_CONTAINS(out, ">gpu &quot;1&quot;</text>");
  EXPECT_STR_CONTAINS(out, ">makespan 4</tspan>");
  EXPECT_STR_CONTAINS(out, "</tspan> input grad</text>");
  EXPECT_STR_CONTAINS(out, "</tspan> weight grad</text>");
  EXPECT_INT_EQ(count_of(out, "class=\"swatch\""), 4);
  free(out);
}

TEST(svg_kinds_and_virtual_stages_coloured_apart)
{
  static const bt_slice_t s[] = {
      {{0, BT_ACT_F, 0}, 0, 0, 1}, {{2, BT_ACT_F, 0}, 0, 1, 2},
      {{2, BT_ACT_B, 0}, 0, 2, 3}, {{0, BT_ACT_B, 0}, 0, 3, 4},
      {{0, BT_ACT_I, 1}, 0, 4, 5}, {{0, BT_ACT_W, 1}, 0, 5, 6},
  };
  bt_timeline_t tl = BT_TIMELINE_INIT;
  bt_error_t err = {0};
  bt_status rc = BT_OK;
  char f0[8], f2[8], b0[8], b2[8], i0[8], w0[8];
  char *out;

  tl.title = "interleaved";
  tl.devices = 2;
  tl.stages = 4;
  tl.slices = s;
  tl.count = sizeof s / sizeof s[0];
  out = render(bt_timeline_write_svg, &tl, 1, &rc, &err);
  EXPECT_STATUS(rc, BT_OK, detail(&err));
  ASSERT_TRUE(out != NULL);
  ASSERT_TRUE(slice_fill(out, "0F0", f0) && slice_fill(out, "2F0", f2));
  ASSERT_TRUE(slice_fill(out, "0B0", b0) && slice_fill(out, "2B0", b2));
  ASSERT_TRUE(slice_fill(out, "0I1", i0) && slice_fill(out, "0W1", w0));
  EXPECT_TRUE(strcmp(f0, f2) != 0);
  EXPECT_TRUE(strcmp(b0, b2) != 0);
  EXPECT_TRUE(strcmp(f0, b0) != 0);
  EXPECT_TRUE(strcmp(i0, b0) != 0);
  EXPECT_TRUE(strcmp(w0, i0) != 0 && strcmp(w0, f0) != 0);
  EXPECT_STR_CONTAINS(out, "shades");
  free(out);
}

TEST(svg_number_only_when_it_fits)
{
  static const bt_slice_t s[] = {
      {{0, BT_ACT_F, 3}, 0, 0, 10},
      {{0, BT_ACT_F, 7}, 0, 10, 10.001},
  };
  bt_timeline_t tl = BT_TIMELINE_INIT;
  bt_error_t err = {0};
  bt_status rc = BT_OK;
  char *out;

  tl.title = "narrow";
  tl.devices = 1;
  tl.stages = 1;
  tl.slices = s;
  tl.count = 2;
  out = render(bt_timeline_write_svg, &tl, 1, &rc, &err);
  EXPECT_STATUS(rc, BT_OK, detail(&err));
  ASSERT_TRUE(out != NULL);
  EXPECT_STR_CONTAINS(out, ">3</text>");
  EXPECT_TRUE(strstr(out, ">7</text>") == NULL);
  EXPECT_INT_EQ(count_of(out, "class=\"slice\""), 2);
  free(out);
}

TEST(svg_deterministic)
{
  bt_timeline_t tl[2] = {fb_timeline(), iw_timeline()};
  bt_error_t err = {0};
  bt_status rc = BT_OK;
  char *a = render(bt_timeline_write_svg, tl, 2, &rc, &err);
  char *b = render(bt_timeline_write_svg, tl, 2, &rc, &err);

  ASSERT_TRUE(a != NULL && b != NULL);
  EXPECT_INT_EQ(strcmp(a, b), 0);
  free(a);
  free(b);
}

TEST(svg_empty_is_valid)
{
  bt_error_t err = {0};
  bt_status rc = BT_OK;
  char *out = render(bt_timeline_write_svg, NULL, 0, &rc, &err);

  EXPECT_STATUS(rc, BT_OK, detail(&err));
  ASSERT_TRUE(out != NULL);
  EXPECT_STR_CONTAINS(out, "<svg");
  EXPECT_TRUE(ends_with(out, "</svg>\n"));
  free(out);
}

/* ---- errors ----------------------------------------------------------- */

static const writer_fn writers[] = {bt_timeline_write_chrome,
                                    bt_timeline_write_svg};

/* Expects both writers to reject the timeline with BT_EINVAL and a message
 * that contains `want`; nothing may be written. */
static void
expect_invalid(const bt_timeline_t *tl, size_t count, const char *want)
{
  for (size_t w = 0; w < 2; w++) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    bt_error_t err = {0};
    bt_status rc;

    ASSERT_TRUE(f != NULL);
    rc = writers[w](f, tl, count, &err);
    fclose(f);
    EXPECT_STATUS(rc, BT_EINVAL, detail(&err));
    EXPECT_INT_EQ(err.status, BT_EINVAL);
    EXPECT_STR_CONTAINS(err.message, want);
    EXPECT_INT_EQ(len, 0);
    free(buf);
  }
}

TEST(invalid_slices_rejected_with_names)
{
  bt_slice_t s[FB_COUNT];
  bt_timeline_t tl[2] = {iw_timeline(), fb_timeline()};

  tl[1].title = "bad";
  tl[1].slices = s;
  memcpy(s, fb_slices, sizeof s);
  s[2].device = 2;
  expect_invalid(tl, 2, "timeline 1 ('bad'), slice 2 (1F0): device 2");
  s[2].device = -1;
  expect_invalid(tl, 2, "slice 2 (1F0): device -1 outside [0, 2)");
  memcpy(s, fb_slices, sizeof s);
  s[4].end = 2;
  expect_invalid(tl, 2, "slice 4 (1B0): end 2 is before start 3");
  memcpy(s, fb_slices, sizeof s);
  s[3].start = NAN;
  expect_invalid(tl, 2, "slice 3 (1F1): times must be finite");
  memcpy(s, fb_slices, sizeof s);
  s[3].end = INFINITY;
  expect_invalid(tl, 2, "slice 3 (1F1)");
  memcpy(s, fb_slices, sizeof s);
  s[0].start = -1;
  expect_invalid(tl, 2, "slice 0 (0F0): start -1 is negative");
  memcpy(s, fb_slices, sizeof s);
  s[1].action = act(5, BT_ACT_F, 0);
  expect_invalid(tl, 2, "slice 1 (5F0): stage 5 outside [0, 2)");
  memcpy(s, fb_slices, sizeof s);
  s[1].action = act(0, 9, 0);
  expect_invalid(tl, 2, "slice 1 (0?0): kind 9");
  memcpy(s, fb_slices, sizeof s);
  s[5].device = 7;
  expect_invalid(tl, 2, "slice 5 (idle): device 7");
}

TEST(invalid_timelines_rejected)
{
  bt_timeline_t tl = fb_timeline();

  expect_invalid(NULL, 1, "timelines is NULL");
  tl.size = 8;
  expect_invalid(&tl, 1, "BT_TIMELINE_INIT");
  tl = fb_timeline();
  tl.devices = 0;
  expect_invalid(&tl, 1, "devices >= 1");
  tl = fb_timeline();
  tl.unit_us = 0;
  expect_invalid(&tl, 1, "unit_us");
  tl = fb_timeline();
  tl.slices = NULL;
  expect_invalid(&tl, 1, "slices is NULL");
  tl = fb_timeline();
  tl.title = NULL;
  tl.unit_us = 1e308;
  expect_invalid(&tl, 1, "timeline 0 ('timeline 0'), slice 1 (0F1): end 2");
  for (size_t w = 0; w < 2; w++) {
    bt_error_t err = {0};
    tl = fb_timeline();
    EXPECT_STATUS(writers[w](NULL, &tl, 1, &err), BT_EINVAL, detail(&err));
    EXPECT_STR_CONTAINS(err.message, "NULL");
  }
}

TEST(old_struct_without_device_names)
{
  bt_timeline_t tl = iw_timeline();
  bt_error_t err = {0};
  bt_status rc = BT_OK;
  char *out;

  /* A caller built before device_names existed: the field is not read. */
  tl.size = offsetof(bt_timeline_t, device_names);
  out = render(bt_timeline_write_chrome, &tl, 1, &rc, &err);
  EXPECT_STATUS(rc, BT_OK, detail(&err));
  ASSERT_TRUE(out != NULL);
  EXPECT_STR_CONTAINS(out, "\"device 1\"");
  EXPECT_TRUE(strstr(out, "gpu") == NULL);
  free(out);
}

TEST(write_error_is_eio)
{
  bt_timeline_t tl = fb_timeline();

  for (size_t w = 0; w < 2; w++) {
    FILE *f = fopen("/dev/null", "r");
    bt_error_t err = {0};

    ASSERT_TRUE(f != NULL);
    EXPECT_STATUS(writers[w](f, &tl, 1, &err), BT_EIO, detail(&err));
    EXPECT_INT_EQ(err.status, BT_EIO);
    EXPECT_TRUE(err.message[0] != '\0');
    /* The stream is now in error; a second call must say so, not write. */
    EXPECT_STATUS(writers[w](f, &tl, 1, &err), BT_EIO, detail(&err));
    EXPECT_STR_CONTAINS(err.message, "error flag");
    fclose(f);
  }
}
