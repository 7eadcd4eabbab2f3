// libcurl through dlopen: only `appctl sync` loads it; the daemon process never maps it (nor its ~20 libraries).
// The libcurl API is used as its headers declare it; only the entry points are looked up at run time.
#define _GNU_SOURCE
#include "appctl_http.h"
#include <curl/curl.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static struct {
    void *handle;
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_perform)(CURL *);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    void (*easy_cleanup)(CURL *);
    const char *(*easy_strerror)(CURLcode);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
    char load_error[256];
} lib;
static pthread_once_t loaded = PTHREAD_ONCE_INIT;

static void load(void) {
    lib.handle = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (!lib.handle) {
        snprintf(lib.load_error, sizeof lib.load_error, "cannot load libcurl.so.4 (Debian package libcurl4): %s", dlerror());
        return;
    }
#define SYM(field, name) *(void **)&lib.field = dlsym(lib.handle, name); if (!lib.field) { snprintf(lib.load_error, sizeof lib.load_error, "libcurl.so.4 has no %s", name); lib.handle = NULL; return; }
    SYM(global_init, "curl_global_init")
    SYM(easy_init, "curl_easy_init")
    SYM(easy_setopt, "curl_easy_setopt")
    SYM(easy_perform, "curl_easy_perform")
    SYM(easy_getinfo, "curl_easy_getinfo")
    SYM(easy_cleanup, "curl_easy_cleanup")
    SYM(easy_strerror, "curl_easy_strerror")
    SYM(slist_append, "curl_slist_append")
    SYM(slist_free_all, "curl_slist_free_all")
#undef SYM
    lib.global_init(CURL_GLOBAL_DEFAULT);
}

typedef struct {
    int fd;
    long long max_bytes;
    long long written;
    int too_large;
    int write_failed;
    appctl_http_result *result;
} transfer;

static size_t on_body(char *data, size_t size, size_t count, void *context) {
    transfer *t = context;
    size_t n = size * count;
    if (t->written + (long long)n > t->max_bytes) { t->too_large = 1; return 0; }
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(t->fd, data + done, n - done);
        if (w < 0) { if (errno == EINTR) continue; t->write_failed = errno; return 0; }
        done += (size_t)w;
    }
    t->written += (long long)n;
    return n;
}

// Keeps the ETag and Last-Modified of the final response (a redirect's headers come first and are replaced).
static void copy_header_value(char *target, size_t capacity, const char *value, size_t length) {
    while (length > 0 && (*value == ' ' || *value == '\t')) { value++; length--; }
    while (length > 0 && (value[length - 1] == '\r' || value[length - 1] == '\n' || value[length - 1] == ' ')) length--;
    if (length >= capacity) length = 0;   // an oversized value is not kept: no conditional request then
    memcpy(target, value, length);
    target[length] = 0;
}

static size_t on_header(char *data, size_t size, size_t count, void *context) {
    transfer *t = context;
    size_t n = size * count;
    if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) { t->result->etag[0] = 0; t->result->last_modified[0] = 0; }
    if (n > 5 && strncasecmp(data, "ETag:", 5) == 0) copy_header_value(t->result->etag, sizeof t->result->etag, data + 5, n - 5);
    if (n > 14 && strncasecmp(data, "Last-Modified:", 14) == 0)
        copy_header_value(t->result->last_modified, sizeof t->result->last_modified, data + 14, n - 14);
    return n;
}

void appctl_http_get(const char *url, int fd, long long max_bytes, const char *if_none_match, const char *if_modified_since,
                     long connect_seconds, long stall_seconds, long total_seconds, appctl_http_result *result) {
    memset(result, 0, sizeof *result);
    pthread_once(&loaded, load);
    if (!lib.handle) { result->curl_code = -1; snprintf(result->error, sizeof result->error, "%s", lib.load_error); return; }
    CURL *curl = lib.easy_init();
    if (!curl) { result->curl_code = -1; snprintf(result->error, sizeof result->error, "curl_easy_init failed"); return; }
    transfer t = { .fd = fd, .max_bytes = max_bytes, .result = result };
    struct curl_slist *headers = NULL;
    char line[512];
    if (if_none_match && *if_none_match) { snprintf(line, sizeof line, "If-None-Match: %s", if_none_match); headers = lib.slist_append(headers, line); }
    if (if_modified_since && *if_modified_since) { snprintf(line, sizeof line, "If-Modified-Since: %s", if_modified_since); headers = lib.slist_append(headers, line); }
    lib.easy_setopt(curl, CURLOPT_URL, url);
    lib.easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    lib.easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    lib.easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
    lib.easy_setopt(curl, CURLOPT_MAXREDIRS, 3L);
    lib.easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    lib.easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, connect_seconds);
    lib.easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    lib.easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, stall_seconds);
    lib.easy_setopt(curl, CURLOPT_TIMEOUT, total_seconds);
    lib.easy_setopt(curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max_bytes);
    lib.easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
    lib.easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
    lib.easy_setopt(curl, CURLOPT_USERAGENT, "appctl-sync/1");
    lib.easy_setopt(curl, CURLOPT_ACCEPT_ENCODING, "");   // gzip/deflate/br as libcurl supports; the limit applies decoded
    lib.easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    lib.easy_setopt(curl, CURLOPT_WRITEDATA, &t);
    lib.easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    lib.easy_setopt(curl, CURLOPT_HEADERDATA, &t);
    if (headers) lib.easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    char error[CURL_ERROR_SIZE] = {0};
    lib.easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
    CURLcode code = lib.easy_perform(curl);
    result->curl_code = (int)code;
    lib.easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &result->http_status);
    result->bytes = t.written;
    if (t.too_large || code == CURLE_FILESIZE_EXCEEDED) snprintf(result->error, sizeof result->error, "the response is larger than the %lld bytes allowed", max_bytes);
    else if (t.write_failed) snprintf(result->error, sizeof result->error, "cannot write the download: %s", strerror(t.write_failed));
    else if (code != CURLE_OK) snprintf(result->error, sizeof result->error, "%s", error[0] ? error : lib.easy_strerror(code));
    if (headers) lib.slist_free_all(headers);
    lib.easy_cleanup(curl);
}
