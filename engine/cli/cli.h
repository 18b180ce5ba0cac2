/* cli.h - the askpanel commands. Each takes argv starting at the command's name and returns
 * the process exit status: 0 success, 1 failure, 2 usage error. */
#ifndef AP_CLI_H
#define AP_CLI_H

#include "core/config.h"

#include <stdbool.h>
#include <stdio.h>

int cli_serve(int argc, char **argv);
int cli_version(int argc, char **argv);
int cli_help(int argc, char **argv);
int cli_migrate(int argc, char **argv);
int cli_tenant(int argc, char **argv);
int cli_key(int argc, char **argv);
int cli_seed_demo(int argc, char **argv);
int cli_run(int argc, char **argv);
int cli_resume(int argc, char **argv);
int cli_check(int argc, char **argv);

/* Prints the list of commands and common options. */
void cli_usage(FILE *out);

/* Options every command that needs the engine understands. */
typedef struct cli_common {
    const char *config_path;
    const char *overrides[8][2]; /* (key, value) from flags, applied after env */
    int noverrides;
} cli_common;

/* If argv[*i] is a common option, consumes it (and its value) into c and returns 1; returns 0
 * when it is not one, -1 (after printing why) when its value is missing. */
int cli_common_option(cli_common *c, int argc, char **argv, int *i);

/* Loads the configuration (file, env, then flags) and sets the log level; prints a one-line
 * error naming the file or key and returns false on failure. */
bool cli_load_config(const cli_common *c, config *cfg);

/* A command-specific option: with `value` it takes an argument, with `flag` it is bare. */
typedef struct cli_opt {
    const char *name;
    const char **value; /* borrowed from argv */
    bool *flag;
} cli_opt;

/* Parses argv[first..] as common options plus opts. Returns 0, or the exit status of a usage
 * error (already printed). */
int cli_parse(int argc, char **argv, int first, cli_common *common, const cli_opt *opts,
              size_t nopts, const char *cmd);

struct store;
/* Opens the configured store (migrating SQLite); prints why and returns false on failure. */
bool cli_open_store(const config *cfg, struct store **out);

/* Prints "askpanel: <msg>" and usage; returns 2. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
