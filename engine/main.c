/* main.c - the askpanel command line: dispatches to the commands in cli/. */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"serve", cli_serve, "run the HTTP API server"},
    {"migrate", cli_migrate, "apply pending store migrations"},
    {"tenant", cli_tenant, "tenant create --slug SLUG --name NAME [--json]"},
    {"key", cli_key, "key create --tenant SLUG --role member|admin | key revoke ID"},
    {"run", cli_run, "run one panel in-process and print it (--strategy --question ...)"},
    {"resume", cli_resume, "continue an interrupted panel: resume PANEL_ID [--json]"},
    {"check", cli_check, "validate and dry-run a strategy or consensus script: check FILE.lua"},
    {"seed-demo", cli_seed_demo, "create the demo tenants from config/tenants/"},
    {"version", cli_version, "print the version"},
    {"help", cli_help, "show this help"},
};

int cli_help(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    cli_usage(stdout);
    return 0;
}

void cli_usage(FILE *out)
{
    fprintf(out, "usage: askpanel <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out,
            "\ncommon options:\n"
            "  --config FILE      configuration file (default config/askpanel.json)\n"
            "  --listen HOST:PORT address to serve on (default 127.0.0.1:8080)\n"
            "  --store URL        sqlite:PATH or postgres://... (default sqlite:data/askpanel.db)\n"
            "  --cache URL        memory or redis://... (default memory)\n"
            "  --log-level LEVEL  debug, info, warn or error\n"
            "\nSee README.md and docs/ for more.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        cli_usage(stderr);
        return 2;
    }
    const char *name = argv[1];
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0)
        name = "version";
    else if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0)
        name = "help";
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "askpanel: unknown command \"%s\"\n\n", name);
    cli_usage(stderr);
    return 2;
}
