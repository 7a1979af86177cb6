/*
 * A stand-in for a vendor's GA/T 947.4 library (test use only; never shipped).
 *
 * It exports the interface documented in drivers/gat947.py and plays one
 * camera: serial ZFY0042, police number 100234, officer 张三 (GBK), unit
 * 440103000000 城关派出所 (GBK). Tests build it with
 *     gcc -shared -fPIC -o libzfy.so gat947_standin.c
 * (-DSTANDIN_NO_SETMSDC / -DSTANDIN_NO_CLOCK leave a function out) and steer
 * it through the environment, read at each call:
 *
 *   GAT947_STANDIN_PASSWORD        the administrator password it accepts (none: refuses all)
 *   GAT947_STANDIN_CLOCK_OFFSET_S  device clock minus real time, seconds, until SyncDevTime
 *   GAT947_STANDIN_LOG             file to which every call is appended, one line each
 *   GAT947_STANDIN_NAME_HEX        raw bytes (hex) for userName instead of 张三
 *   GAT947_STANDIN_ABSENT          set: no camera answers (CONNECT_FAILED)
 *   GAT947_STANDIN_FAIL            SyncDevTime or SetMSDC: that call fails with its own code
 *
 * The call log never contains the password: tests check that the dock keeps
 * it secret, and a stand-in that leaked it would blur that.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    CONNECT_SUCCESS = 1,
    CONNECT_FAILED,
    CHECK_PWD_SUCCESS,
    CHECK_PWD_FAILED,
    SET_SYSTEMTIME_SUCCESS,
    SET_SYSTEMTIME_FAILED,
    MSDC_SUCCESS,
    MSDC_FAILED,
};

typedef struct {
    char cSerial[8];
    char userNo[7];
    char userName[33];
    char unitNo[13];
    char unitName[33];
} ZFY_INFO;

static int connected = 0;
static int disk_mode = 0;
static long clock_offset_s = 0;

static void log_call(const char *name, const char *detail)
{
    const char *path = getenv("GAT947_STANDIN_LOG");
    FILE *f;
    if (path == NULL || (f = fopen(path, "a")) == NULL)
        return;
    fprintf(f, "%s%s%s\n", name, detail[0] ? " " : "", detail);
    fclose(f);
}

static int ready(const char *name, int *iRet)
{
    if (!connected || disk_mode) {
        log_call(name, "not-connected");
        *iRet = CONNECT_FAILED;
        return 0;
    }
    return 1;
}

static int password_ok(const char *name, const char *sPwd, int *iRet)
{
    const char *want = getenv("GAT947_STANDIN_PASSWORD");
    if (want == NULL || sPwd == NULL || strcmp(sPwd, want) != 0) {
        log_call(name, "password-refused");
        *iRet = CHECK_PWD_FAILED;
        return 0;
    }
    return 1;
}

static int told_to_fail(const char *name)
{
    const char *which = getenv("GAT947_STANDIN_FAIL");
    if (which == NULL || strcmp(which, name) != 0)
        return 0;
    log_call(name, "failed");
    return 1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int Init_Device(char *IDCode, int *iRet)
{
    const char *offset = getenv("GAT947_STANDIN_CLOCK_OFFSET_S");
    if (getenv("GAT947_STANDIN_ABSENT") != NULL) {
        log_call("Init_Device", "absent");
        *iRet = CONNECT_FAILED;
        return 0;
    }
    connected = 1;
    disk_mode = 0;
    clock_offset_s = offset ? strtol(offset, NULL, 10) : 0;
    strcpy(IDCode, "EVD01");
    log_call("Init_Device", "");
    *iRet = CONNECT_SUCCESS;
    return 1;
}

void UnInit_Device(int *iRet)
{
    log_call("UnInit_Device", "");
    connected = 0;
    *iRet = CONNECT_SUCCESS;
}

int GetIDCode(char *IDCode, int *iRet)
{
    if (!ready("GetIDCode", iRet))
        return 0;
    strcpy(IDCode, "EVD01");
    log_call("GetIDCode", "");
    *iRet = CONNECT_SUCCESS;
    return 1;
}

int GetZFYInfo(ZFY_INFO *info, char *sPwd, int *iRet)
{
    const char *name_hex = getenv("GAT947_STANDIN_NAME_HEX");
    if (!ready("GetZFYInfo", iRet) || !password_ok("GetZFYInfo", sPwd, iRet))
        return 0;
    memset(info, 0, sizeof *info);
    memcpy(info->cSerial, "ZFY0042", 7);
    memcpy(info->userNo, "100234", 6);
    if (name_hex != NULL) {
        size_t i;
        for (i = 0; i < 32 && name_hex[2 * i] && name_hex[2 * i + 1]; i++) {
            int hi = hexval(name_hex[2 * i]), lo = hexval(name_hex[2 * i + 1]);
            if (hi < 0 || lo < 0)
                break;
            info->userName[i] = (char)(hi * 16 + lo);
        }
    } else {
        memcpy(info->userName, "\xd5\xc5\xc8\xfd", 4); /* 张三 */
    }
    memcpy(info->unitNo, "440103000000", 12);
    memcpy(info->unitName, "\xb3\xc7\xb9\xd8\xc5\xc9\xb3\xf6\xcb\xf9", 10); /* 城关派出所 */
    log_call("GetZFYInfo", "");
    *iRet = CONNECT_SUCCESS;
    return 1;
}

#ifndef STANDIN_NO_CLOCK
int ReadDevTime(char *sTime, char *sPwd, int *iRet)
{
    char detail[64];
    time_t now = time(NULL) + clock_offset_s;
    struct tm local;
    if (!ready("ReadDevTime", iRet) || !password_ok("ReadDevTime", sPwd, iRet))
        return 0;
    localtime_r(&now, &local);
    strftime(sTime, 20, "%Y-%m-%d %H:%M:%S", &local);
    snprintf(detail, sizeof detail, "offset=%ld", clock_offset_s);
    log_call("ReadDevTime", detail);
    *iRet = CONNECT_SUCCESS;
    return 1;
}
#endif

int SyncDevTime(char *sPwd, int *iRet)
{
    if (!ready("SyncDevTime", iRet) || !password_ok("SyncDevTime", sPwd, iRet))
        return 0;
    if (told_to_fail("SyncDevTime")) {
        *iRet = SET_SYSTEMTIME_FAILED;
        return 0;
    }
    clock_offset_s = 0;
    log_call("SyncDevTime", "");
    *iRet = SET_SYSTEMTIME_SUCCESS;
    return 1;
}

#ifndef STANDIN_NO_SETMSDC
int SetMSDC(char *sPwd, int *iRet)
{
    if (!ready("SetMSDC", iRet) || !password_ok("SetMSDC", sPwd, iRet))
        return 0;
    if (told_to_fail("SetMSDC")) {
        *iRet = MSDC_FAILED;
        return 0;
    }
    disk_mode = 1;
    log_call("SetMSDC", "");
    *iRet = MSDC_SUCCESS;
    return 1;
}
#endif
