#include "cli/cli.h"

#include "core/log.h"

#include <stdarg.h>
#include <string.h>

static const struct {
    const char *flag;
    const char *key; /* NULL: --config */
} flags[] = {
    {"--config", NULL},   {"--listen", "listen"},       {"--store", "store"},
    {"--cache", "cache"}, {"--log-level", "log_level"},
};

int cli_common_option(cli_common *c, int argc, char **argv, int *i)
{
    const char *arg = argv[*i];
    for (size_t f = 0; f < sizeof flags / sizeof flags[0]; f++) {
        size_t fl = strlen(flags[f].flag);
        const char *value = NULL;
        if (strcmp(arg, flags[f].flag) == 0) {
            if (*i + 1 >= argc) {
                fprintf(stderr, "askpanel: %s needs a value\n", flags[f].flag);
                return -1;
            }
            value = argv[++*i];
        } else if (strncmp(arg, flags[f].flag, fl) == 0 && arg[fl] == '=') {
            value = arg + fl + 1;
        } else {
            continue;
        }
        if (flags[f].key == NULL) {
            c->config_path = value;
        } else if (c->noverrides < (int)(sizeof c->overrides / sizeof c->overrides[0])) {
            c->overrides[c->noverrides][0] = flags[f].key;
            c->overrides[c->noverrides][1] = value;
            c->noverrides++;
        }
        return 1;
    }
    return 0;
}

bool cli_load_config(const cli_common *c, config *cfg)
{
    ap_err err = {0};
    if (config_load(cfg, c->config_path, &err) != AP_OK)
        goto fail;
    for (int k = 0; k < c->noverrides; k++) {
        char origin[64];
        snprintf(origin, sizeof origin, "--%s", c->overrides[k][0]);
        for (char *p = origin; *p != '\0'; p++)
            if (*p == '_')
                *p = '-';
        if (config_set(cfg, c->overrides[k][0], c->overrides[k][1], origin, &err) != AP_OK)
            goto fail;
    }
    log_level level;
    if (log_parse_level(cfg->log_level, &level))
        log_set_level(level);
    return true;
fail:
    fprintf(stderr, "askpanel: %s\n", err.msg);
    config_free(cfg);
    return false;
}

int cli_parse(int argc, char **argv, int first, cli_common *common, const cli_opt *opts,
              size_t nopts, const char *cmd)
{
    for (int i = first; i < argc; i++) {
        int r = cli_common_option(common, argc, argv, &i);
        if (r < 0)
            return 2;
        if (r > 0)
            continue;
        size_t k = 0;
        while (k < nopts && strcmp(argv[i], opts[k].name) != 0)
            k++;
        if (k == nopts)
            return cli_usage_error("%s: unknown option \"%s\"", cmd, argv[i]);
        if (opts[k].flag != NULL)
            *opts[k].flag = true;
        else if (i + 1 < argc)
            *opts[k].value = argv[++i];
        else
            return cli_usage_error("%s: %s needs a value", cmd, argv[i]);
    }
    return 0;
}

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("askpanel: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\n\n", stderr);
    va_end(ap);
    cli_usage(stderr);
    return 2;
}

int cli_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("askpanel %s\n", AP_VERSION);
    return 0;
}
