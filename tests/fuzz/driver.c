/* driver.c - runs every file of a corpus directory through a fuzz target once, so the corpus
 * doubles as a regression test under any compiler (libFuzzer builds use their own main). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_INPUT (4 * 1024 * 1024)

static int run_file(const char *path)
{
    int rc = 1;
    uint8_t *data = NULL;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "cannot open %s\n", path);
        return 1;
    }
    data = malloc(FUZZ_MAX_INPUT);
    if (data == NULL)
        goto out;
    size_t n = fread(data, 1, FUZZ_MAX_INPUT, f);
    if (ferror(f)) {
        fprintf(stderr, "cannot read %s\n", path);
        goto out;
    }
    LLVMFuzzerTestOneInput(data, n);
    rc = 0;
out:
    free(data);
    fclose(f);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    DIR *d = opendir(argv[1]);
    if (d == NULL) {
        fprintf(stderr, "cannot open corpus %s\n", argv[1]);
        return 2;
    }
    int failed = 0, ran = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        int w = snprintf(path, sizeof path, "%s/%s", argv[1], e->d_name);
        if (w < 0 || (size_t)w >= sizeof path) {
            failed++;
            continue;
        }
        failed += run_file(path);
        ran++;
    }
    closedir(d);
    printf("%d passed, %d failed\n", ran - failed, failed);
    return failed == 0 && ran > 0 ? 0 : 1;
}
