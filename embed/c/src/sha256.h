#ifndef EDGEVAE_SHA256_H
#define EDGEVAE_SHA256_H
#include <stddef.h>
#include <stdint.h>

/* Lower-case hex SHA-256 of data (64 characters and a terminating NUL). */
void sha256_hex(const unsigned char *data, size_t len, char out[65]);

#endif
