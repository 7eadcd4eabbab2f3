#ifndef APPCTL_HTTP_H
#define APPCTL_HTTP_H
#include <stddef.h>

/// The outcome of one GET. `curl_code` is libcurl's CURLcode (0: the transfer completed); -1: libcurl could not be
/// loaded (`error` says why).
typedef struct {
    int curl_code;
    long http_status;
    long long bytes;
    char etag[256];
    char last_modified[128];
    char error[512];
} appctl_http_result;

/// GETs `url` (http or https only; redirects followed only to those, at most 3) into `fd`, writing at most
/// `max_bytes` of the decoded body (a longer body ends the transfer: CURLE_WRITE_ERROR with `error` set).
/// `if_none_match` / `if_modified_since` (may be NULL or empty) make it conditional (304 writes nothing).
/// A transfer slower than 1 byte/s for `stall_seconds`, or longer than `total_seconds`, is cut off.
/// TLS is verified against the system's CAs. libcurl is loaded on first use (dlopen), so that the daemon, which
/// shares the binary, never maps it.
void appctl_http_get(const char *url, int fd, long long max_bytes, const char *if_none_match, const char *if_modified_since,
                     long connect_seconds, long stall_seconds, long total_seconds, appctl_http_result *result);

#endif
