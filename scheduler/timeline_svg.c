/* SVG writer: timelines drawn like the figures of the GPipe paper. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "baton/timeline.h"
#include "error.h"
#include "timeline_internal.h"

/* Geometry in pixels.  A writer cannot measure glyphs, so text widths are
 * estimated from the font size with a generous average advance; labels then
 * never collide, at worst they get a little more room than they need. */
#define FONT "Helvetica, Arial, sans-serif"
#define FS_TITLE 14.0
#define FS_SUB 12.0
#define FS_LABEL 12.0
#define FS_BOX 11.0
#define ADVANCE 0.62      /* average glyph width per unit of font size */
#define ADVANCE_BOLD 0.68
#define MARGIN 14.0
#define LABEL_GAP 8.0     /* device label to plot */
#define ROW_H 22.0
#define ROW_GAP 4.0
#define TITLE_H 26.0      /* title baseline to first row, included */
#define AXIS_H 30.0
#define PANEL_GAP 16.0
#define LEGEND_H 30.0
#define SWATCH 14.0
#define PLOT_MIN_W 720.0
#define PLOT_MAX_W 1600.0
/* The shortest slice gets this width when PLOT_MAX_W allows, so that a
 * two-digit microbatch number fits in every box of a common picture. */
#define BOX_WANT_W 24.0

#define TRACK_FILL "#e6e6e6"
#define INK "#222222"
#define INK_SOFT "#555555"

static const char *const kind_names[4] = {"forward", "backward", "input grad",
                                          "weight grad"};

/* Blue, green, teal, amber: apart in hue and in lightness, so they stay
 * distinct in greyscale print and for the common colour-vision deficits. */
static const unsigned char kind_rgb[4][3] = {
    {0x3b, 0x6e, 0xb5}, /* F */
    {0x3a, 0x93, 0x3f}, /* B */
    {0x2a, 0xa1, 0x98}, /* I */
    {0xe8, 0x9a, 0x2c}, /* W */
};

struct layout {
  double unit_us;        /* microseconds per axis unit */
  const char *unit_name; /* "ms", ...; NULL when unit_us has no name */
  double span;           /* axis length, in axis units */
  double px;             /* pixels per axis unit */
  double plot_x, plot_w; /* time axis origin and length */
  double width, height;
  double step;           /* between ticks, in axis units */
  int decimals;          /* for tick labels */
  unsigned kinds;        /* bit k set when kind k occurs */
  int32_t chunks;        /* most virtual stages per device, over panels */
};

struct rgb {
  double r, g, b;
};

/* ---- text ------------------------------------------------------------- */

/* Counts characters, not bytes, so UTF-8 names are not overestimated. */
static double
text_width(const char *s, double font_size, double advance)
{
  size_t n = 0;

  for (; *s != '\0'; s++)
    if (((unsigned char)*s & 0xc0) != 0x80)
      n++;
  return (double)n * font_size * advance;
}

static void
xml_text(FILE *f, const char *s)
{
  for (; *s != '\0'; s++) {
    unsigned char c = (unsigned char)*s;
    switch (c) {
    case '&':
      fputs("&amp;", f);
      break;
    case '<':
      fputs("&lt;", f);
      break;
    case '>':
      fputs("&gt;", f);
      break;
    case '"':
      fputs("&quot;", f);
      break;
    case '\'':
      fputs("&apos;", f);
      break;
    default:
      /* XML 1.0 forbids most control characters even as references. */
      fputc(c < 0x20 && c != '\t' && c != '\n' ? ' ' : c, f);
    }
  }
}

/* ---- colours ---------------------------------------------------------- */

/* Virtual stage `chunk` of `chunks` on one device: the first darker, the
 * last lighter than the kind's colour, evenly in between. */
static struct rgb
slice_colour(int32_t kind, int32_t chunk, int32_t chunks)
{
  const unsigned char *c = kind_rgb[kind];
  struct rgb out = {c[0], c[1], c[2]};
  double t;

  if (chunks <= 1)
    return out;
  t = -0.35 + 0.8 * (double)chunk / (double)(chunks - 1);
  if (t < 0) {
    out.r *= 1 + t;
    out.g *= 1 + t;
    out.b *= 1 + t;
  } else {
    out.r += (255 - out.r) * t;
    out.g += (255 - out.g) * t;
    out.b += (255 - out.b) * t;
  }
  return out;
}

static void
colour_hex(struct rgb c, char buf[8])
{
  snprintf(buf, 8, "#%02x%02x%02x", (unsigned)lround(c.r) & 0xff,
           (unsigned)lround(c.g) & 0xff, (unsigned)lround(c.b) & 0xff);
}

/* Dark text on light boxes, white on dark ones (Rec. 709 luma). */
static const char *
ink_on(struct rgb c)
{
  double luma = (0.2126 * c.r + 0.7152 * c.g + 0.0722 * c.b) / 255.0;

  return luma > 0.6 ? INK : "#ffffff";
}

/* ---- layout ----------------------------------------------------------- */

/* The axis unit: the timelines' own when they agree (a simulation reads in
 * its cost units), else microseconds so that mixed panels still share one
 * scale. */
static void
choose_unit(const bt_timeline_t *tl, size_t count, struct layout *L)
{
  L->unit_us = count > 0 ? tl[0].unit_us : 1000.0;
  for (size_t i = 1; i < count; i++)
    if (tl[i].unit_us != L->unit_us)
      L->unit_us = 1.0;
  if (L->unit_us == 1.0)
    L->unit_name = "\xc2\xb5s";
  else if (L->unit_us == 1e3)
    L->unit_name = "ms";
  else if (L->unit_us == 1e6)
    L->unit_name = "s";
  else
    L->unit_name = NULL;
}

static double
panel_end(const bt_timeline_t *tl, double unit_us)
{
  double end = 0;

  for (size_t s = 0; s < tl->count; s++)
    if (tl->slices[s].action.kind != BT_ACT_IDLE && tl->slices[s].end > end)
      end = tl->slices[s].end;
  return end * tl->unit_us / unit_us;
}

/* Span, shortest slice, kinds and virtual stages over all panels. */
static double
scan_slices(const bt_timeline_t *tl, size_t count, struct layout *L)
{
  double shortest = INFINITY;

  L->span = 0;
  L->kinds = 0;
  L->chunks = 1;
  for (size_t i = 0; i < count; i++) {
    double scale = tl[i].unit_us / L->unit_us;
    double end = panel_end(&tl[i], L->unit_us);
    int32_t chunks = bt__timeline_chunks(&tl[i]);
    if (end > L->span)
      L->span = end;
    if (chunks > L->chunks)
      L->chunks = chunks;
    for (size_t s = 0; s < tl[i].count; s++) {
      const bt_slice_t *sl = &tl[i].slices[s];
      double d = (sl->end - sl->start) * scale;
      if (sl->action.kind == BT_ACT_IDLE)
        continue;
      L->kinds |= 1u << sl->action.kind;
      if (d > 0 && d < shortest)
        shortest = d;
    }
  }
  return shortest;
}

/* Ticks every 1, 2 or 5 x 10^k axis units: 4 to 10 intervals. */
static void
choose_ticks(struct layout *L)
{
  double raw = L->span / 10.0;
  int k = (int)floor(log10(raw));
  double mag = pow(10.0, k);
  double r = raw / mag;

  if (r <= 1.0 + 1e-9)
    L->step = mag;
  else if (r <= 2.0 + 1e-9)
    L->step = 2 * mag;
  else if (r <= 5.0 + 1e-9)
    L->step = 5 * mag;
  else {
    L->step = 10 * mag;
    k++;
  }
  L->decimals = k < 0 ? (k < -12 ? 12 : -k) : 0;
}

static double
label_column(const bt_timeline_t *tl, size_t count)
{
  double w = text_width("time (\xc2\xb5s)", FS_LABEL, ADVANCE);
  char buf[24];

  for (size_t i = 0; i < count; i++)
    for (int32_t d = 0; d < tl[i].devices; d++) {
      double dw = text_width(bt__timeline_device_name(&tl[i], d, buf,
                                                      sizeof buf),
                             FS_LABEL, ADVANCE);
      if (dw > w)
        w = dw;
    }
  return w;
}

static double
panel_height(const bt_timeline_t *tl)
{
  return TITLE_H + tl->devices * ROW_H + (tl->devices - 1) * ROW_GAP +
         AXIS_H + PANEL_GAP;
}

static double
title_width(const bt_timeline_t *tl, size_t i)
{
  char buf[32];
  double w = text_width(bt__timeline_title(tl, i, buf, sizeof buf), FS_TITLE,
                        ADVANCE_BOLD);

  if (tl->subtitle != NULL)
    w += 12 + text_width(tl->subtitle, FS_SUB, ADVANCE);
  return w;
}

static double
legend_width(const struct layout *L)
{
  double w = 0;

  for (int k = 0; k < 4; k++)
    if (L->kinds & (1u << k))
      w += SWATCH * (L->chunks > 1 ? 2 : 1) + 6 +
           text_width(kind_names[k], FS_LABEL, ADVANCE) + 28;
  if (L->chunks > 1)
    w += text_width("shades: virtual stage 0 (dark) to 99 (light)", FS_LABEL,
                    ADVANCE);
  return w;
}

static void
layout(const bt_timeline_t *tl, size_t count, struct layout *L)
{
  double shortest, want;

  choose_unit(tl, count, L);
  shortest = scan_slices(tl, count, L);
  if (!(L->span > 0))
    L->span = 1;
  want = isfinite(shortest) ? L->span * BOX_WANT_W / shortest : PLOT_MIN_W;
  L->plot_w = want < PLOT_MIN_W ? PLOT_MIN_W
              : want > PLOT_MAX_W ? PLOT_MAX_W
                                  : want;
  L->px = L->plot_w / L->span;
  choose_ticks(L);
  L->plot_x = MARGIN + label_column(tl, count) + LABEL_GAP;
  /* Half a tick label may stick out past the axis end. */
  L->width = L->plot_x + L->plot_w + MARGIN + 24;
  L->height = MARGIN + LEGEND_H;
  for (size_t i = 0; i < count; i++) {
    double tw = 2 * MARGIN + title_width(&tl[i], i);
    if (tw > L->width)
      L->width = tw;
    L->height += panel_height(&tl[i]);
  }
  if (2 * MARGIN + legend_width(L) > L->width)
    L->width = 2 * MARGIN + legend_width(L);
  L->height += MARGIN - PANEL_GAP;
  L->width = ceil(L->width);
  L->height = ceil(L->height);
}

/* ---- drawing ---------------------------------------------------------- */

static double
swatch(FILE *f, double x, double y, int kind, int32_t chunks)
{
  char hex[8];

  for (int32_t c = 0; c < (chunks > 1 ? 2 : 1); c++) {
    colour_hex(slice_colour(kind, c == 0 ? 0 : chunks - 1, chunks), hex);
    fprintf(f, "<rect class=\"swatch\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" "
               "height=\"%.2f\" fill=\"%s\"/>\n",
            x, y, SWATCH, SWATCH, hex);
    x += SWATCH;
  }
  return x;
}

static void
write_legend(FILE *f, const struct layout *L)
{
  double x = MARGIN, y = MARGIN;

  fprintf(f, "<g class=\"legend\" font-size=\"%.0f\">\n", FS_LABEL);
  for (int k = 0; k < 4; k++) {
    if (!(L->kinds & (1u << k)))
      continue;
    x = swatch(f, x, y, k, L->chunks) + 6;
    fprintf(f, "<text x=\"%.2f\" y=\"%.2f\"><tspan font-weight=\"bold\">%c"
               "</tspan> %s</text>\n",
            x, y + SWATCH - 2, bt_action_kind_letter(k), kind_names[k]);
    x += text_width(kind_names[k], FS_LABEL, ADVANCE) + 28;
  }
  if (L->chunks > 1)
    fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" fill=\"%s\">shades: virtual "
               "stage 0 (dark) to %d (light)</text>\n",
            x, y + SWATCH - 2, INK_SOFT, (int)L->chunks - 1);
  fputs("</g>\n", f);
}

static void
write_title(FILE *f, const bt_timeline_t *tl, size_t i, double y)
{
  char buf[32];

  fprintf(f, "<text class=\"title\" x=\"%.2f\" y=\"%.2f\" font-size=\"%.0f\" "
             "font-weight=\"bold\">",
          MARGIN, y + FS_TITLE, FS_TITLE);
  xml_text(f, bt__timeline_title(tl, i, buf, sizeof buf));
  if (tl->subtitle != NULL) {
    fprintf(f, "<tspan dx=\"12\" font-size=\"%.0f\" font-weight=\"normal\" "
               "fill=\"%s\">",
            FS_SUB, INK_SOFT);
    xml_text(f, tl->subtitle);
    fputs("</tspan>", f);
  }
  fputs("</text>\n", f);
}

static double
row_y(double top, int32_t d)
{
  return top + d * (ROW_H + ROW_GAP);
}

/* Device labels and grey tracks; a track ends where the panel's last slice
 * does, so a longer makespan is a longer bar and idle time is bare grey. */
static void
write_rows(FILE *f, const bt_timeline_t *tl, const struct layout *L,
           double top)
{
  double w = panel_end(tl, L->unit_us) * L->px;
  char buf[24];

  for (int32_t d = 0; d < tl->devices; d++) {
    double y = row_y(top, d);
    fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"end\">",
            L->plot_x - LABEL_GAP, y + ROW_H / 2 + FS_LABEL * 0.35);
    xml_text(f, bt__timeline_device_name(tl, d, buf, sizeof buf));
    fprintf(f, "</text>\n<rect class=\"track\" x=\"%.2f\" y=\"%.2f\" "
               "width=\"%.2f\" height=\"%.2f\" fill=\"%s\"/>\n",
            L->plot_x, y, w, ROW_H, TRACK_FILL);
  }
}

static void
write_tooltip(FILE *f, const bt_timeline_t *tl, const bt_slice_t *sl,
              const struct layout *L)
{
  double scale = tl->unit_us / L->unit_us;
  char name[BT_ACTION_TEXT_MAX], dev[24];

  bt_action_format(sl->action, name, sizeof name);
  fprintf(f, "<title>%s on ", name);
  xml_text(f, bt__timeline_device_name(tl, sl->device, dev, sizeof dev));
  fprintf(f, ": %.6g to %.6g%s%s</title>", sl->start * scale,
          sl->end * scale, L->unit_name ? " " : "",
          L->unit_name ? L->unit_name : "");
}

static void
write_slice(FILE *f, const bt_timeline_t *tl, const bt_slice_t *sl,
            const struct layout *L, double top)
{
  double scale = tl->unit_us / L->unit_us;
  double x = L->plot_x + sl->start * scale * L->px;
  double w = (sl->end - sl->start) * scale * L->px;
  double y = row_y(top, sl->device);
  struct rgb c = slice_colour(sl->action.kind,
                              bt__timeline_chunk(tl, sl->action.stage),
                              bt__timeline_chunks(tl));
  char hex[8], mb[16];

  colour_hex(c, hex);
  fprintf(f, "<rect class=\"slice\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" "
             "height=\"%.2f\" fill=\"%s\">",
          x, y, w, ROW_H, hex);
  write_tooltip(f, tl, sl, L);
  fputs("</rect>\n", f);
  snprintf(mb, sizeof mb, "%d", (int)sl->action.microbatch);
  if (w >= text_width(mb, FS_BOX, ADVANCE) + 4)
    fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" fill=\"%s\" stroke=\"none\" "
               "text-anchor=\"middle\">%s</text>\n",
            x + w / 2, y + ROW_H / 2 + FS_BOX * 0.35, ink_on(c), mb);
}

static void
write_axis(FILE *f, const struct layout *L, double y)
{
  double end = L->plot_x + L->plot_w;
  long n = (long)floor(L->span / L->step + 1e-9);

  fprintf(f, "<g class=\"axis\" stroke=\"%s\" stroke-width=\"1\">\n"
             "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\"/>\n",
          INK_SOFT, L->plot_x, y, end, y);
  for (long t = 0; t <= n; t++) {
    double x = L->plot_x + (double)t * L->step * L->px;
    fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\"/>\n"
               "<text x=\"%.2f\" y=\"%.2f\" stroke=\"none\" fill=\"%s\" "
               "text-anchor=\"middle\">%.*f</text>\n",
            x, y, x, y + 4, x, y + 4 + FS_LABEL, INK_SOFT, L->decimals,
            (double)t * L->step);
  }
  fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" stroke=\"none\" fill=\"%s\" "
             "text-anchor=\"end\">time",
          L->plot_x - LABEL_GAP, y + 4 + FS_LABEL, INK_SOFT);
  if (L->unit_name != NULL)
    fprintf(f, " (%s)", L->unit_name);
  else
    fprintf(f, " (%g \xc2\xb5s)", L->unit_us);
  fputs("</text>\n</g>\n", f);
}

/* One panel at y; returns the y of the next. */
static double
write_panel(FILE *f, const bt_timeline_t *tl, size_t i,
            const struct layout *L, double y)
{
  double top = y + TITLE_H;

  fprintf(f, "<g class=\"panel\" id=\"timeline-%zu\">\n", i);
  write_title(f, tl, i, y);
  write_rows(f, tl, L, top);
  /* A thin white outline parts adjacent boxes of one device. */
  fprintf(f, "<g font-size=\"%.0f\" stroke=\"#ffffff\" "
             "stroke-width=\"1\">\n",
          FS_BOX);
  for (size_t s = 0; s < tl->count; s++)
    if (tl->slices[s].action.kind != BT_ACT_IDLE)
      write_slice(f, tl, &tl->slices[s], L, top);
  fputs("</g>\n", f);
  write_axis(f, L, row_y(top, tl->devices) - ROW_GAP + 4);
  fputs("</g>\n", f);
  return y + panel_height(tl);
}

bt_status
bt_timeline_write_svg(FILE *f, const bt_timeline_t *timelines, size_t count,
                      bt_error_t *err)
{
  struct layout L;
  double y;
  bt_status rc;

  rc = bt__timeline_check(f, timelines, count, err);
  if (rc != BT_OK)
    return rc;
  layout(timelines, count, &L);
  errno = 0;
  fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
             "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" "
             "height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" font-family=\"%s\" "
             "font-size=\"%.0f\" fill=\"%s\">\n"
             "<rect class=\"background\" width=\"100%%\" height=\"100%%\" "
             "fill=\"#ffffff\"/>\n",
          L.width, L.height, L.width, L.height, FONT, FS_LABEL, INK);
  write_legend(f, &L);
  y = MARGIN + LEGEND_H;
  for (size_t i = 0; i < count; i++)
    y = write_panel(f, &timelines[i], i, &L, y);
  fputs("</svg>\n", f);
  return bt__timeline_finish(f, "SVG picture", err);
}
