/*
 * qemu-template: QEMU command lines
 *
 * Copyright (c) 2026 The VM templating authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qobject/qdict.h"
#include "qobject/qjson.h"
#include "qobject/qlist.h"
#include "qobject/qstring.h"
#include "qemu-template.h"
#include "cmdline.h"

char *opts_escape(const char *s)
{
    g_auto(GStrv) parts = g_strsplit(s, ",", -1);

    return g_strjoinv(",,", parts);
}

/* @s inside a JSON string. */
static char *json_escape(const char *s)
{
    QString *q = qstring_from_str(s);
    g_autoptr(GString) json = qobject_to_json(QOBJECT(q));

    qobject_unref(q);
    return g_strndup(json->str + 1, json->len - 2);
}

/*
 * QEMU options whose value is an option list (key=value,...: commas in a
 * value are doubled) or, when it starts with '{', JSON.
 */
static const char *const optlist_options[] = {
    "accel", "add-fd", "audiodev", "blockdev", "boot", "chardev",
    "compat", "device", "display", "drive", "fsdev", "fw_cfg", "global",
    "iscsi", "m", "M", "machine", "mon", "msg", "name", "net", "netdev",
    "nic", "numa", "object", "overcommit", "plugin", "rtc", "run-with",
    "sandbox", "set", "smbios", "smp", "spice", "tpmdev", "trace",
    "virtfs", "vnc", NULL
};

/*
 * QEMU options whose value is a character device in the old syntax
 * (qemu_chr_parse_compat()): "unix:PATH,server=on,..." is an option
 * list, so commas in its path are doubled; "file:PATH" and the like are
 * plain paths.
 */
static const char *const chardev_options[] = {
    "serial", "parallel", "monitor", "qmp", "qmp-pretty", "gdb",
    "debugcon", "virtioconsole", NULL
};

/* The name of option @arg ("-opt" or "--opt"), or NULL. */
static const char *option_name(const char *arg)
{
    if (!arg || arg[0] != '-' || !arg[1]) {
        return NULL;
    }
    return arg + (arg[1] == '-' ? 2 : 1);
}

/* Is @arg, the value of option @name, parsed as an option list? */
static bool is_option_list(const char *name, const char *arg)
{
    if (g_strv_contains(optlist_options, name)) {
        return true;
    }
    if (g_strv_contains(chardev_options, name)) {
        if (g_str_has_prefix(arg, "mon:")) {
            arg += 4;
        }
        return g_str_has_prefix(arg, "unix:");
    }
    return false;
}

char *subst_dir(const char *arg, const char *dir, const char *opt)
{
    g_auto(GStrv) parts = g_strsplit(arg, DIR_PLACEHOLDER, -1);
    g_autofree char *esc = NULL;
    const char *name = option_name(opt);

    if (name && arg[0] == '{' && g_strv_contains(optlist_options, name)) {
        esc = json_escape(dir);
    } else if (name && is_option_list(name, arg)) {
        esc = opts_escape(dir);
    }
    return g_strjoinv(esc ?: dir, parts);
}

/*
 * What the tool owns in a JSON option value: the vmgenid device, ids
 * with its prefix, and (bypass) the machine's memory backend.  Decoded,
 * so "vm\u0067enid" is vmgenid too.
 */
static bool json_owned(const char *arg, TemplateMode mode)
{
    g_autoptr(QObject) obj = qobject_from_json(arg, NULL);
    QDict *d = qobject_to(QDict, obj);
    const char *id = d ? qdict_get_try_str(d, "id") : NULL;

    if (!d) {
        return false;
    }
    return !g_strcmp0(qdict_get_try_str(d, "driver"), "vmgenid") ||
           !g_strcmp0(qdict_get_try_str(d, "qom-type"), "vmgenid") ||
           (id && g_str_has_prefix(id, ID_PREFIX)) ||
           (mode == MODE_BYPASS && qdict_haskey(d, "memory-backend"));
}

/* options the tool gives; -readconfig would hide arguments from a check */
static const char *const owned_options[] = {
    "incoming", "uuid", "daemonize", "readconfig", "S", "add-fd", NULL
};

/* Is @a (before @next) something the tool owns? */
static bool arg_owned(const char *a, const char *next, TemplateMode mode)
{
    const char *opt = option_name(a);

    if (opt && g_strv_contains(owned_options, opt)) {
        return true;
    }
    if (a[0] == '{' && json_owned(a, mode)) {
        return true;
    }
    if (opt && !strcmp(opt, "device") && (g_str_has_prefix(next, "vmgenid") ||
                                          strstr(next, "driver=vmgenid"))) {
        return true;
    }
    return strstr(a, "id=" ID_PREFIX) || strstr(a, "\"" ID_PREFIX) ||
           (mode == MODE_BYPASS && (strstr(a, "memory-backend=") ||
                                    strstr(a, "\"memory-backend\"")));
}

/*
 * The tool owns the VM's monitor socket, its generation ID device, its
 * UUID, where its state comes from and (bypass) its RAM.  Checked on
 * every use: a manifest's arguments too.
 */
bool check_user_args(char **args, TemplateMode mode, Error **errp)
{
    int i;

    for (i = 0; args && args[i]; i++) {
        const char *next = args[i + 1] ?: "";

        if (arg_owned(args[i], next, mode)) {
            const char *opt = option_name(args[i]);
            bool value = opt && !g_strv_contains(owned_options, opt);

            error_setg(errp, "the QEMU argument '%s%s%s' is managed by "
                       "qemu-template", args[i], value ? " " : "",
                       value ? next : "");
            error_append_hint(errp, "qemu-template adds -incoming, -uuid, "
                              "-S, -add-fd, the vmgenid device, its QMP "
                              "monitor and, in bypass mode, the RAM backend "
                              "itself; -daemonize and -readconfig are "
                              "refused.\n");
            return false;
        }
    }
    return true;
}

bool parse_ram_size(char **args, uint64_t *size, Error **errp)
{
    const char *val = NULL;
    g_autofree char *num = NULL;
    const char *p;
    int i;

    for (i = 0; args[i]; i++) {
        const char *opt = option_name(args[i]);

        if (opt && !strcmp(opt, "m") && args[i + 1]) {
            val = args[++i];
        }
    }
    if (!val) {
        error_setg(errp, "bypass mode needs the RAM size: add -m SIZE to "
                   "the QEMU arguments");
        return false;
    }
    p = strstr(val, "size=");
    p = p ? p + 5 : val;
    num = g_strndup(p, strcspn(p, ","));
    if (qemu_strtosz_MiB(num, NULL, size) < 0 || !*size) {
        error_setg(errp, "cannot read the RAM size in '-m %s'", val);
        return false;
    }
    return true;
}

char *state_fdset_path(void)
{
    return g_strdup_printf("/dev/fdset/%d", STATE_FDSET);
}

QList *file_channels(const char *path)
{
    QDict *addr = qdict_new(), *chan = qdict_new();
    QList *list = qlist_new();

    /* a file: URI cannot hold every path (",offset=" is an option) */
    qdict_put_str(addr, "transport", "file");
    qdict_put_str(addr, "filename", path);
    qdict_put_int(addr, "offset", 0);
    qdict_put_str(chan, "channel-type", "main");
    qdict_put(chan, "addr", addr);
    qlist_append(list, chan);
    return list;
}

static void add_args(GPtrArray *a, char **args, const char *dir)
{
    int i;

    for (i = 0; args && args[i]; i++) {
        g_ptr_array_add(a, subst_dir(args[i], dir, i ? args[i - 1] : NULL));
    }
}

/* What the tool adds to every VM: QMP, identity, name. */
static void add_tool_args(GPtrArray *a, const VmArgs *v)
{
    /* the tool made the socket: it knows who listens */
    g_ptr_array_add(a, g_strdup("-chardev"));
    g_ptr_array_add(a, g_strdup_printf("socket,id=" ID_PREFIX "qmp,fd=%d,"
                                       "server=on,wait=off", v->qmp_fd));
    g_ptr_array_add(a, g_strdup("-mon"));
    g_ptr_array_add(a, g_strdup("chardev=" ID_PREFIX "qmp,mode=control"));
    g_ptr_array_add(a, g_strdup("-device"));
    g_ptr_array_add(a, g_strdup_printf("vmgenid,id=" ID_PREFIX "genid,"
                                       "guid=%s", v->genid));
    g_ptr_array_add(a, g_strdup("-uuid"));
    g_ptr_array_add(a, g_strdup(v->uuid));
    g_ptr_array_add(a, g_strdup("-name"));
    g_ptr_array_add(a, opts_escape(v->name));
}

char **build_argv(const VmArgs *v)
{
    GPtrArray *a = g_ptr_array_new();

    g_ptr_array_add(a, g_strdup(v->qemu));
    add_args(a, v->user, v->dir);
    add_args(a, v->extra, v->dir);
    add_tool_args(a, v);
    if (v->mode == MODE_BYPASS) {
        /*
         * The template shares its RAM file; a clone maps it privately and
         * opens it read-only (the file is read-only once published).  A
         * clone's is the descriptor the tool checked: QEMU opens
         * mem-path with open(), which knows /proc/self/fd but not
         * /dev/fdset.
         */
        g_autofree char *ram = v->clone ?
            g_strdup_printf("/proc/self/fd/%d", v->ram_fd) :
            opts_escape(v->ram_path);

        g_ptr_array_add(a, g_strdup("-object"));
        g_ptr_array_add(a, g_strdup_printf(
            "memory-backend-file,id=" ID_PREFIX "ram,size=%" PRIu64
            ",mem-path=%s,%s", v->ram_size, ram,
            v->clone ? "share=off,readonly=on,rom=off" : "share=on"));
        g_ptr_array_add(a, g_strdup("-machine"));
        g_ptr_array_add(a, g_strdup("memory-backend=" ID_PREFIX "ram"));
    } else if (v->clone) {
        g_ptr_array_add(a, g_strdup("-global"));
        g_ptr_array_add(a, g_strdup("migration.mapped-ram=on"));
        g_ptr_array_add(a, g_strdup("-global"));
        g_ptr_array_add(a, g_strdup("migration.mapped-ram-load=map"));
    }
    if (v->clone) {
        /* the state: migrate-incoming opens /dev/fdset/STATE_FDSET */
        g_ptr_array_add(a, g_strdup("-add-fd"));
        g_ptr_array_add(a, g_strdup_printf("fd=%d,set=%d", v->state_fd,
                                           STATE_FDSET));
        /* MIGRATION events say when the load completed */
        g_ptr_array_add(a, g_strdup("-global"));
        g_ptr_array_add(a, g_strdup("migration.x-events=on"));
        g_ptr_array_add(a, g_strdup("-incoming"));
        g_ptr_array_add(a, g_strdup("defer"));
    } else {
        g_ptr_array_add(a, g_strdup("-S"));
    }
    g_ptr_array_add(a, NULL);
    return (char **)g_ptr_array_free(a, false);
}
