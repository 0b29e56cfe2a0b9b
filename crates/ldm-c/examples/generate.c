/* Generates an image with the ldm C library, then shows cancellation and errors.
 *
 *   cc -I crates/ldm-c/include crates/ldm-c/examples/generate.c -L target/release -lldm \
 *      -o generate
 *   LD_LIBRARY_PATH=target/release ./generate export/emoji-text apple.png [STEPS [SEMANTIC]]
 *
 * Exits 0 when the image was written, the second generation was cancelled by its callback,
 * and the bad requests were refused with the expected statuses; given a semantic-map bundle
 * (export/scenes-semantic), it also draws a map of a square and refuses bad maps. */
#include <stdio.h>
#include <stdlib.h>

#include "ldm.h"

static int failures = 0;

static void expect(LdmStatus got, LdmStatus wanted, const char *what) {
  if (got == wanted) {
    printf("%s: %s%s%s\n", what, ldm_status_name(got), got == LDM_OK ? "" : ": ",
           got == LDM_OK ? "" : ldm_last_error());
  } else {
    printf("%s: expected %s, got %s: %s\n", what, ldm_status_name(wanted), ldm_status_name(got),
           ldm_last_error());
    failures++;
  }
}

/* Prints progress; the user data is the step to cancel after (0: never). */
static bool on_step(uint32_t step, uint32_t total, void *user_data) {
  uint32_t cancel_after = *(const uint32_t *)user_data;
  printf("  step %u of %u\n", step, total);
  return cancel_after == 0 || step < cancel_after;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s BUNDLE OUT.png [STEPS]\n", argv[0]);
    return 2;
  }
  uint32_t steps = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 0;

  LdmPipeline *pipeline = NULL;
  LdmStatus status = ldm_pipeline_load(argv[1], "tract", 1, &pipeline);
  expect(status, LDM_OK, "load");
  if (status != LDM_OK) return 1;

  /* 1. An image, written as a PNG. */
  LdmRequest *request = ldm_request_new("red apple, twemoji style");
  ldm_request_set_seed(request, 7);
  if (steps > 0) ldm_request_set_steps(request, steps);
  uint32_t never = 0;
  LdmImages *images = NULL;
  expect(ldm_generate(pipeline, request, on_step, &never, &images), LDM_OK, "generate");
  if (images != NULL) {
    printf("%zu image(s) of %ux%u\n", ldm_images_count(images), ldm_image_width(images, 0),
           ldm_image_height(images, 0));
    expect(ldm_image_write_png(images, 0, argv[2]), LDM_OK, "write");
    expect(ldm_image_write_png(images, 5, argv[2]), LDM_INVALID_ARGUMENT, "write image 5 of 1");
  }
  ldm_images_free(images);

  /* 2. A second generation, cancelled by its callback after the first step. */
  uint32_t after_one = 1;
  LdmImages *cancelled = NULL;
  expect(ldm_generate(pipeline, request, on_step, &after_one, &cancelled), LDM_CANCELLED,
         "cancelled generation");
  if (cancelled != NULL) failures++;

  /* 3. Errors: a request the bundle cannot serve, a bundle that does not exist, NULLs. */
  ldm_request_set_steps(request, 0);
  LdmImages *none = NULL;
  expect(ldm_generate(pipeline, request, NULL, NULL, &none), LDM_REQUEST, "0 steps");
  expect(ldm_request_set_sampler(request, "heun"), LDM_INVALID_ARGUMENT, "sampler heun");
  expect(ldm_request_set_images(request, 100000), LDM_REQUEST, "100000 images");
  expect(ldm_generate(NULL, request, NULL, NULL, &none), LDM_INVALID_ARGUMENT, "NULL pipeline");
  LdmPipeline *missing = NULL;
  expect(ldm_pipeline_load("no/such/bundle", "tract", 1, &missing), LDM_BUNDLE, "missing bundle");
  expect(ldm_pipeline_load(argv[1], "gpu", 1, &missing), LDM_INVALID_ARGUMENT, "backend gpu");

  ldm_request_free(request);
  ldm_pipeline_free(pipeline);

  /* 4. A semantic map: a square (class 2) on a 128x64 background (class 0). */
  if (argc > 4 && ldm_pipeline_load(argv[4], "tract", 1, &pipeline) == LDM_OK) {
    static uint8_t ids[64][128];
    for (int y = 16; y < 48; y++)
      for (int x = 16; x < 48; x++) ids[y][x] = 2;
    LdmRequest *drawn = ldm_request_new("");
    ldm_request_set_steps(drawn, 2);
    expect(ldm_request_set_semantic_map(drawn, 128, 64, &ids[0][0]), LDM_OK, "semantic map");
    LdmImages *map_images = NULL;
    expect(ldm_generate(pipeline, drawn, NULL, NULL, &map_images), LDM_OK, "draw the map");
    if (map_images != NULL)
      printf("drew %ux%u\n", ldm_image_width(map_images, 0), ldm_image_height(map_images, 0));
    ldm_images_free(map_images);
    ids[0][0] = 9;
    ldm_request_set_semantic_map(drawn, 128, 64, &ids[0][0]);
    expect(ldm_generate(pipeline, drawn, NULL, NULL, &map_images), LDM_REQUEST, "class 9");
    expect(ldm_request_set_semantic_map(drawn, 100000, 64, &ids[0][0]), LDM_INVALID_ARGUMENT,
           "map 100000 wide");
    expect(ldm_request_set_semantic_map(drawn, 128, 64, NULL), LDM_INVALID_ARGUMENT, "NULL ids");
    ldm_request_free(drawn);
    ldm_pipeline_free(pipeline);
  } else if (argc > 4) {
    expect(LDM_BUNDLE, LDM_OK, "load the semantic-map bundle");
  }
  printf("%d unexpected result(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
