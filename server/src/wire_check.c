/*
 * wire_check.c - string validation over the protobuf wire format.
 *
 * A second, read-only pass over bytes protobuf-c has accepted, so the
 * framing is known to be sound; the walker still bounds every read by the
 * buffer and nesting by MAX_DEPTH, and treats anything it cannot follow as
 * malformed rather than trusting the first pass.
 */
#include "wire_check.h"

#include <stdio.h>
#include <string.h>

#define MAX_DEPTH 32

bool af_utf8_valid(const uint8_t *s, size_t len)
{
  size_t i = 0;
  while (i < len) {
    uint8_t c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t need;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
      cp = c & 0x1Fu;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      cp = c & 0x0Fu;
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      cp = c & 0x07u;
    } else {
      return false; /* continuation byte, C0/C1 overlong, F5.. */
    }
    if (len - i <= need)
      return false;
    for (size_t k = 1; k <= need; k++) {
      uint8_t cc = s[i + k];
      if ((cc & 0xC0) != 0x80)
        return false;
      cp = cp << 6 | (cc & 0x3Fu);
    }
    if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += need + 1;
  }
  return true;
}

static bool read_varint(const uint8_t *buf, size_t len, size_t *pos,
                        uint64_t *out)
{
  uint64_t v = 0;
  for (unsigned shift = 0; shift < 64 && *pos < len; shift += 7) {
    uint8_t b = buf[(*pos)++];
    v |= (uint64_t)(b & 0x7F) << shift;
    if (!(b & 0x80)) {
      *out = v;
      return true;
    }
  }
  return false;
}

static bool walk(const ProtobufCMessageDescriptor *desc, const uint8_t *buf,
                 size_t len, int depth, char *why, size_t n)
{
  if (depth > MAX_DEPTH) {
    snprintf(why, n, "malformed request: messages nested too deeply");
    return false;
  }
  size_t pos = 0;
  while (pos < len) {
    uint64_t key;
    if (!read_varint(buf, len, &pos, &key))
      goto bad;
    uint32_t wt = (uint32_t)(key & 7);
    uint64_t tag = key >> 3;
    if (tag == 0 || tag > 536870911u) {
      /* protobuf-c keeps such a field as unknown, then cannot read its
       * own encoding of it back (found by fuzz_decode). */
      snprintf(why, n, "malformed request: field number %llu is out of range",
               (unsigned long long)tag);
      return false;
    }
    uint64_t skip = 0;
    switch (wt) {
    case 0: {
      uint64_t ignored;
      if (!read_varint(buf, len, &pos, &ignored))
        goto bad;
      continue;
    }
    case 1:
      skip = 8;
      break;
    case 5:
      skip = 4;
      break;
    case 2:
      if (!read_varint(buf, len, &pos, &skip))
        goto bad;
      break;
    default:
      goto bad; /* groups: not used by our protos */
    }
    if (skip > len - pos)
      goto bad;
    if (wt == 2 && tag <= UINT32_MAX) {
      const ProtobufCFieldDescriptor *f =
          protobuf_c_message_descriptor_get_field(desc, (unsigned)tag);
      const uint8_t *p = buf + pos;
      size_t l = (size_t)skip;
      if (f != NULL && f->type == PROTOBUF_C_TYPE_STRING) {
        if (memchr(p, '\0', l) != NULL) {
          snprintf(why, n, "malformed request: %s.%s contains a NUL byte",
                   desc->short_name, f->name);
          return false;
        }
        if (!af_utf8_valid(p, l)) {
          snprintf(why, n, "malformed request: %s.%s is not valid UTF-8",
                   desc->short_name, f->name);
          return false;
        }
      } else if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE &&
                 f->descriptor != NULL) {
        if (!walk(f->descriptor, p, l, depth + 1, why, n))
          return false;
      }
    }
    pos += (size_t)skip;
  }
  return true;
bad:
  snprintf(why, n, "malformed request: cannot decode %s", desc->name);
  return false;
}

bool af_wire_strings_valid(const ProtobufCMessageDescriptor *desc,
                           const uint8_t *buf, size_t len, char *why, size_t n)
{
  if (desc == NULL || (buf == NULL && len > 0))
    return false;
  return walk(desc, buf, len, 0, why, n);
}
