/*
 * qemu-template: make VM templates and start clones from them
 *
 * A template is a VM booted once and saved into a template directory:
 * its device state, its RAM (a memory file for "bypass", a fixed-ram
 * file for "mapped-ram") and a manifest that says how to start clones.
 * A clone is a new QEMU process that loads the template: it maps the
 * template's memory copy-on-write and starts running at once, with its
 * own VM generation ID and SMBIOS UUID.
 *
 * This unit is the command line: global options, the command table
 * (qemu-template-cmds.hx, shared with the manual) and each command's own
 * options.  docs/devel/qemu-template.rst describes the design.
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <getopt.h>
#include "qemu-version.h"
#include "qemu/help-texts.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "monitor/monitor.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qemu-template.h"
#include "admin.h"
#include "clone.h"
#include "create.h"
#include "pool.h"

/* what a command returns: success, a failure, a usage error */
enum {
    EXIT_OK = 0,
    EXIT_FAILED = 1,
    EXIT_USAGE = 2,
};

/*
 * A command: @argv holds its words before "--" (argv[0] is its name),
 * @rest those after "--".  Its result (printed with --json) goes to
 * *@result, also on failure when it made something.
 */
typedef int CmdFunc(int argc, char **argv, char **rest, QObject **result,
                    Error **errp);

typedef struct Command {
    const char *name;
    CmdFunc *fn;
    const char *synopsis;
    const char *summary;
} Command;

static CmdFunc cmd_create, cmd_clone, cmd_pool, cmd_stop, cmd_list,
               cmd_destroy, cmd_help;

static const Command commands[] = {
#define DEF(name, fn, synopsis, summary) { name, fn, synopsis, summary },
#include "qemu-template-cmds.h"
#undef DEF
};

static const Command *find_command(const char *name)
{
    int i;

    for (i = 0; i < ARRAY_SIZE(commands); i++) {
        if (!strcmp(commands[i].name, name)) {
            return &commands[i];
        }
    }
    return NULL;
}

static void usage(FILE *f)
{
    int i;

    fprintf(f,
"Usage: qemu-template [--dir DIR] [--json] COMMAND [ARGS...]\n"
"       qemu-template --help | --version\n"
"\n"
"Make VM templates and start clones from them.\n"
"\n");
    for (i = 0; i < ARRAY_SIZE(commands); i++) {
        fprintf(f, "  %s\n        %s\n", commands[i].synopsis,
                commands[i].summary);
    }
    fprintf(f,
"\n"
"--dir DIR   the tool's directory (else $QEMU_TEMPLATE_DIR, else\n"
"            $XDG_DATA_HOME/qemu-template)\n"
"--json      results, and errors, as JSON on stdout\n"
"            (both also after the command)\n"
"\n"
"The QEMU binary is --qemu, else $QEMU_TEMPLATE_QEMU, else\n"
"qemu-system-x86_64 from $PATH; clone and pool refuse a template made by\n"
"another binary.  In QEMU-ARGS, @DIR@ stands for each VM's directory.\n"
"'qemu-template COMMAND --help' shows a command's synopsis.\n"
"See the qemu-template(1) manual.\n");
}

static int cmd_usage(const char *cmd, FILE *f)
{
    const Command *c = find_command(cmd);

    fprintf(f, "Usage: qemu-template [--dir DIR] [--json] %s\n%s\n"
            "See the qemu-template(1) manual.\n", c->synopsis, c->summary);
    return f == stdout ? EXIT_OK : EXIT_USAGE;
}

/* ------------------------------------------------------------------ */
/* option helpers */

/*
 * libqemuutil's stubs print errors on stderr; these take their place so
 * that error_hint() can capture a hint (the JSON of an error has it).
 */
int error_vprintf(const char *fmt, va_list ap)
{
    if (error_capture) {
        size_t before = error_capture->len;

        g_string_append_vprintf(error_capture, fmt, ap);
        return error_capture->len - before;
    }
    return vfprintf(stderr, fmt, ap);
}

int error_vprintf_unless_qmp(const char *fmt, va_list ap)
{
    return error_vprintf(fmt, ap);
}

/* --dir, given before or after the command */
static const char *opt_dir;

/*
 * A global option given after the command: true if @c was one.  Every
 * command's table has them: { "dir", ..., 'd' }, { "json", ..., 'j' }.
 */
static bool global_option(int c, const char *arg)
{
    if (c == 'd') {
        opt_dir = arg;
    } else if (c == 'j') {
        opt_json = true;
    }
    return c == 'd' || c == 'j';
}

/*
 * The tool's directory, once the command's options are read: created
 * by commands that make something (@create), else only looked at.
 */
static bool setup_dir(bool create, Error **errp)
{
    g_autofree char *default_dir = NULL;
    const char *dir = opt_dir ?: g_getenv("QEMU_TEMPLATE_DIR");

    if (!dir) {
        default_dir = g_build_filename(g_get_user_data_dir(),
                                       "qemu-template", NULL);
        dir = default_dir;
    }
    /* what the tool and its QEMUs create is the user's alone */
    umask(umask(0) | 077);
    return setup_top_dir(dir, create, errp);
}

/*
 * What getopt did not accept (it prints nothing: opterr is off): @c is
 * ':' for an option without its value, '?' for an unknown one.
 */
static int bad_option(int c, char **argv, Error **errp)
{
    const char *arg = argv[optind - 1];

    if (c == ':') {
        error_setg(errp, "option '%s' of %s needs a value", arg, argv[0]);
    } else {
        error_setg(errp, "unknown option '%s' for %s", arg, argv[0]);
    }
    error_append_hint(errp, "'qemu-template %s --help' shows its "
                      "options.\n", argv[0]);
    return EXIT_USAGE;
}

/* The positional arguments of a command: between @min and @max. */
static int positional(int argc, char **argv, int min, int max,
                      Error **errp)
{
    int n = argc - optind;

    if (n < min || n > max) {
        error_setg(errp, "%s takes %s", argv[0],
                   max == 0 ? "no arguments" :
                   min == max ? "a name" : "at most a name");
        error_append_hint(errp, "Usage: qemu-template %s\n",
                          find_command(argv[0])->synopsis);
        return EXIT_USAGE;
    }
    return EXIT_OK;
}

static TemplateMode parse_mode(const char *s)
{
    TemplateMode m;

    for (m = 0; m < MODE__MAX && strcmp(mode_names[m], s); m++) {
        /* look on */
    }
    return m;
}

static bool parse_count(const char *opt, const char *val, int min, int *n,
                        Error **errp)
{
    if (qemu_strtoi(val, NULL, 10, n) < 0 || *n < min) {
        error_setg(errp, "--%s must be a number of at least %d, not '%s'",
                   opt, min, val);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* commands */

static int cmd_create(int argc, char **argv, char **rest, QObject **result,
                      Error **errp)
{
    static const struct option opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "mode", required_argument, NULL, 'm' },
        { "qemu", required_argument, NULL, 'q' },
        { "ready", required_argument, NULL, 'r' },
        { "timeout", required_argument, NULL, 't' },
        { "dir", required_argument, NULL, 'd' },
        { "json", no_argument, NULL, 'j' },
        { NULL, 0, NULL, 0 }
    };
    g_autoptr(GPtrArray) ready = g_ptr_array_new();
    CreateOpts o = { .mode = MODE_BYPASS, .timeout = 300 };
    int c;

    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (global_option(c, optarg)) {
            continue;
        }
        switch (c) {
        case 'h':
            return cmd_usage(argv[0], stdout);
        case 'm':
            o.mode = parse_mode(optarg);
            break;
        case 'q':
            o.qemu = optarg;
            break;
        case 'r':
            g_ptr_array_add(ready, optarg);
            break;
        case 't':
            if (!parse_count("timeout", optarg, 1, &o.timeout, errp)) {
                return EXIT_USAGE;
            }
            break;
        default:
            return bad_option(c, argv, errp);
        }
    }
    if (o.mode == MODE__MAX) {
        error_setg(errp, "--mode must be bypass or mapped-ram");
        return EXIT_USAGE;
    }
    if (positional(argc, argv, 1, 1, errp)) {
        return EXIT_USAGE;
    }
    g_ptr_array_add(ready, NULL);
    o.ready = (char **)ready->pdata;
    if (!setup_dir(true, errp)) {
        return EXIT_FAILED;
    }
    return create_run(argv[optind], &o, rest, result, errp) ? EXIT_OK
                                                             : EXIT_FAILED;
}

/* --nic NETDEV, collected into a NULL-terminated vector */
static void add_nic(GPtrArray *nics, const char *netdev)
{
    g_ptr_array_insert(nics, nics->len - 1, (char *)netdev);
}

static int cmd_clone(int argc, char **argv, char **rest, QObject **result,
                     Error **errp)
{
    static const struct option opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "count", required_argument, NULL, 'n' },
        { "no-pool", no_argument, NULL, 'P' },
        { "nic", required_argument, NULL, 'N' },
        { "qemu", required_argument, NULL, 'q' },
        { "timeout", required_argument, NULL, 't' },
        { "dir", required_argument, NULL, 'd' },
        { "json", no_argument, NULL, 'j' },
        { NULL, 0, NULL, 0 }
    };
    g_autoptr(GPtrArray) nics = g_ptr_array_new();
    CloneOpts o = { .count = 1, .extra = rest, .timeout = CLONE_LOAD_S };
    int c;

    g_ptr_array_add(nics, NULL);
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (global_option(c, optarg)) {
            continue;
        }
        switch (c) {
        case 'h':
            return cmd_usage(argv[0], stdout);
        case 'n':
            if (!parse_count("count", optarg, 1, &o.count, errp)) {
                return EXIT_USAGE;
            }
            break;
        case 'P':
            o.no_pool = true;
            break;
        case 'N':
            add_nic(nics, optarg);
            break;
        case 'q':
            o.qemu = optarg;
            break;
        case 't':
            if (!parse_count("timeout", optarg, 1, &o.timeout, errp)) {
                return EXIT_USAGE;
            }
            break;
        default:
            return bad_option(c, argv, errp);
        }
    }
    if (positional(argc, argv, 1, 1, errp)) {
        return EXIT_USAGE;
    }
    o.nics = (char **)nics->pdata;
    if (!setup_dir(true, errp)) {
        return EXIT_FAILED;
    }
    return clone_run(argv[optind], &o, result, errp) ? EXIT_OK : EXIT_FAILED;
}

static int cmd_pool(int argc, char **argv, char **rest, QObject **result,
                    Error **errp)
{
    static const struct option opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "size", required_argument, NULL, 's' },
        { "nic", required_argument, NULL, 'N' },
        { "qemu", required_argument, NULL, 'q' },
        { "daemonize", no_argument, NULL, 'D' },
        { "pidfile", required_argument, NULL, 'p' },
        { "timeout", required_argument, NULL, 't' },
        { "client-timeout", required_argument, NULL, 'c' },
        { "dir", required_argument, NULL, 'd' },
        { "json", no_argument, NULL, 'j' },
        { NULL, 0, NULL, 0 }
    };
    g_autoptr(GPtrArray) nics = g_ptr_array_new();
    PoolOpts o = {
        .size = 1, .extra = rest, .timeout = CLONE_LOAD_S,
        .client_timeout = POOL_CLIENT_S,
    };
    int c;

    g_ptr_array_add(nics, NULL);
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (global_option(c, optarg)) {
            continue;
        }
        switch (c) {
        case 'h':
            return cmd_usage(argv[0], stdout);
        case 's':
            if (!parse_count("size", optarg, 1, &o.size, errp)) {
                return EXIT_USAGE;
            }
            break;
        case 'N':
            add_nic(nics, optarg);
            break;
        case 'q':
            o.qemu = optarg;
            break;
        case 'D':
            o.daemonize = true;
            break;
        case 'p':
            o.pidfile = optarg;
            break;
        case 't':
            if (!parse_count("timeout", optarg, 1, &o.timeout, errp)) {
                return EXIT_USAGE;
            }
            break;
        case 'c':
            if (!parse_count("client-timeout", optarg, 1, &o.client_timeout,
                             errp)) {
                return EXIT_USAGE;
            }
            break;
        default:
            return bad_option(c, argv, errp);
        }
    }
    if (positional(argc, argv, 1, 1, errp)) {
        return EXIT_USAGE;
    }
    o.nics = (char **)nics->pdata;
    if (!setup_dir(true, errp)) {
        return EXIT_FAILED;
    }
    return pool_run(argv[optind], &o, errp) ? EXIT_OK : EXIT_FAILED;
}

/*
 * A command with no options of its own and @min..@max names, which
 * creates nothing (not even the tool's directory); -1 after --help.
 */
static int simple_command(int argc, char **argv, char **rest, int min,
                          int max, Error **errp)
{
    static const struct option opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "dir", required_argument, NULL, 'd' },
        { "json", no_argument, NULL, 'j' },
        { NULL, 0, NULL, 0 }
    };
    int c;

    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (global_option(c, optarg)) {
            continue;
        }
        if (c == 'h') {
            cmd_usage(argv[0], stdout);
            return -1;
        }
        return bad_option(c, argv, errp);
    }
    if (rest[0]) {
        error_setg(errp, "%s takes no QEMU arguments", argv[0]);
        return EXIT_USAGE;
    }
    if (positional(argc, argv, min, max, errp)) {
        return EXIT_USAGE;
    }
    return setup_dir(false, errp) ? EXIT_OK : EXIT_FAILED;
}

static int cmd_stop(int argc, char **argv, char **rest, QObject **result,
                    Error **errp)
{
    int r = simple_command(argc, argv, rest, 1, 1, errp);

    if (r) {
        return MAX(r, EXIT_OK);
    }
    return pool_stop(argv[optind], errp) ? EXIT_OK : EXIT_FAILED;
}

static int cmd_list(int argc, char **argv, char **rest, QObject **result,
                    Error **errp)
{
    int r = simple_command(argc, argv, rest, 0, 1, errp);

    if (r) {
        return MAX(r, EXIT_OK);
    }
    return list_run(argv[optind], result, errp) ? EXIT_OK : EXIT_FAILED;
}

static int cmd_destroy(int argc, char **argv, char **rest, QObject **result,
                       Error **errp)
{
    int r = simple_command(argc, argv, rest, 1, 1, errp);

    if (r) {
        return MAX(r, EXIT_OK);
    }
    return destroy_run(argv[optind], errp) ? EXIT_OK : EXIT_FAILED;
}

static int cmd_help(int argc, char **argv, char **rest, QObject **result,
                    Error **errp)
{
    if (argc > 1 && find_command(argv[1])) {
        return cmd_usage(argv[1], stdout);
    }
    usage(stdout);
    return EXIT_OK;
}

/* ------------------------------------------------------------------ */
/* main */

/* Split the command's words at "--": *@rest gets what follows. */
static int split_rest(int argc, char **argv, char ***rest)
{
    static char *none[] = { NULL };
    int i;

    for (i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--")) {
            argv[i] = NULL;
            *rest = argv + i + 1;
            return i;
        }
    }
    *rest = none;
    return argc;
}

/* The global options before the command; an exit code, or -1 to go on. */
static int global_options(int argc, char **argv)
{
    static const struct option opts[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "dir", required_argument, NULL, 'd' },
        { "json", no_argument, NULL, 'j' },
        { NULL, 0, NULL, 0 }
    };
    int c;

    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            usage(stdout);
            return EXIT_OK;
        case 'V':
            printf("qemu-template version " QEMU_FULL_VERSION "\n"
                   QEMU_COPYRIGHT "\n");
            return EXIT_OK;
        case 'd':
        case 'j':
            global_option(c, optarg);
            break;
        default:
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    return -1;
}

int main(int argc, char **argv)
{
    const Command *cmd;
    QObject *result = NULL;
    Error *err = NULL;
    char **rest;
    int r, n;

    /* a daemonized pool closes what it was started with */
    fds_note_inherited();
    error_init(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    r = global_options(argc, argv);
    if (r >= 0) {
        return r;
    }
    argv += optind;
    cmd = find_command(argv[0]);
    if (!cmd) {
        error_setg(&err, "unknown command '%s'", argv[0]);
        error_append_hint(&err, "'qemu-template help' lists the "
                          "commands.\n");
        tool_report_error(err, NULL);
        return EXIT_USAGE;
    }
    n = split_rest(argc - optind, argv, &rest);
    qemu_reset_optind();
    opterr = 0;
    /* each command sets the tool's directory up after its options */
    r = cmd->fn(n, argv, rest, &result, &err);
    if (err) {
        tool_report_error(err, result);
    } else if (opt_json && result) {
        print_json(result);
    }
    qobject_unref(result);
    return r;
}
