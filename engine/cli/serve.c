#include "cli/cli.h"

int cli_serve(int argc, char **argv)
{
    cli_common common = {0};
    for (int i = 1; i < argc; i++) {
        int r = cli_common_option(&common, argc, argv, &i);
        if (r < 0)
            return 2;
        if (r == 0)
            return cli_usage_error("serve: unknown option \"%s\"", argv[i]);
    }
    config cfg;
    if (!cli_load_config(&common, &cfg))
        return 1;
    config_free(&cfg);
    return 0;
}
