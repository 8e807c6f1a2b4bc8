/*
 * test_codec.c - server/src/wire_check.c: the UTF-8 validator at its
 * boundaries, and the string walk over encoded requests (nested messages,
 * unknown fields, bad framing). No server: pure functions.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "antifragility/v1/breaker.pb-c.h"
#include "wire_check.h"

static bool utf8(const char *s)
{
  return af_utf8_valid((const uint8_t *)s, strlen(s));
}

static void utf8_accepts_every_valid_length(void **state)
{
  (void)state;
  assert_true(utf8(""));
  assert_true(utf8("plain ascii"));
  assert_true(utf8("\xc2\x80"));         /* U+0080, smallest 2-byte */
  assert_true(utf8("\xdf\xbf"));         /* U+07FF */
  assert_true(utf8("\xe0\xa0\x80"));     /* U+0800, smallest 3-byte */
  assert_true(utf8("\xed\x9f\xbf"));     /* U+D7FF, below surrogates */
  assert_true(utf8("\xee\x80\x80"));     /* U+E000, above surrogates */
  assert_true(utf8("\xf0\x90\x80\x80")); /* U+10000 */
  assert_true(utf8("\xf4\x8f\xbf\xbf")); /* U+10FFFF, the largest */
  assert_true(utf8("gr\xc3\xbc\xc3\x9f dich"));
}

static void utf8_refuses_overlong_surrogates_and_truncation(void **state)
{
  (void)state;
  assert_false(utf8("\xc0\xaf"));         /* overlong '/' */
  assert_false(utf8("\xc1\xbf"));         /* overlong */
  assert_false(utf8("\xe0\x9f\xbf"));     /* overlong 3-byte */
  assert_false(utf8("\xf0\x8f\xbf\xbf")); /* overlong 4-byte */
  assert_false(utf8("\xed\xa0\x80"));     /* U+D800 surrogate */
  assert_false(utf8("\xf4\x90\x80\x80")); /* above U+10FFFF */
  assert_false(utf8("\xf5\x80\x80\x80"));
  assert_false(utf8("\x80"));     /* lone continuation */
  assert_false(utf8("\xc3"));     /* truncated */
  assert_false(utf8("\xe2\x82")); /* truncated */
  assert_false(utf8("\xc3\x28")); /* bad continuation */
  assert_false(utf8("\xff"));
}

static size_t pack_report(const char *name, const char *error_type,
                          uint8_t *buf)
{
  Antifragility__V1__ReportOutcomeRequest q =
      ANTIFRAGILITY__V1__REPORT_OUTCOME_REQUEST__INIT;
  q.breaker_name = (char *)name;
  q.error_type = (char *)error_type;
  return antifragility__v1__report_outcome_request__pack(&q, buf);
}

static void walk_names_the_bad_field(void **state)
{
  (void)state;
  const ProtobufCMessageDescriptor *d =
      &antifragility__v1__report_outcome_request__descriptor;
  uint8_t buf[256];
  char why[256];
  size_t n = pack_report("ok", "timeout", buf);
  assert_true(af_wire_strings_valid(d, buf, n, why, sizeof why));

  /* breaker_name = 1: replace its 2 bytes "ok" with "o\0". */
  n = pack_report("ok", "timeout", buf);
  assert_int_equal(buf[0], 0x0a);
  buf[3] = '\0';
  assert_false(af_wire_strings_valid(d, buf, n, why, sizeof why));
  assert_string_equal(why, "malformed request: ReportOutcomeRequest."
                           "breaker_name contains a NUL byte");
  n = pack_report("ok", "timeout", buf);
  buf[3] = 0xc3;
  assert_false(af_wire_strings_valid(d, buf, n, why, sizeof why));
  assert_string_equal(why, "malformed request: ReportOutcomeRequest."
                           "breaker_name is not valid UTF-8");

  /* An unknown length-delimited field is skipped, whatever it holds. */
  n = pack_report("ok", NULL, buf);
  const uint8_t unknown[] = {0xf2, 0x07, 0x02, 0x00, 0xff}; /* field 126 */
  memcpy(buf + n, unknown, sizeof unknown);
  assert_true(
      af_wire_strings_valid(d, buf, n + sizeof unknown, why, sizeof why));

  /* Framing that runs past the end is malformed. */
  const uint8_t cut[] = {0x0a, 0x05, 'a', 'b'};
  assert_false(af_wire_strings_valid(d, cut, sizeof cut, why, sizeof why));
  assert_string_equal(
      why,
      "malformed request: cannot decode antifragility.v1.ReportOutcomeRequest");
}

/* Regression (fuzz_decode): protobuf-c accepts field number 0 written as
 * a non-minimal varint (0x80 0x00), keeps it as an unknown field and then
 * cannot decode its own re-encoding. The server refuses it up front. */
static void walk_refuses_field_number_zero(void **state)
{
  (void)state;
  const ProtobufCMessageDescriptor *d =
      &antifragility__v1__report_outcome_request__descriptor;
  const uint8_t crash[] = {0x80, 0x00, 0x00};
  ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, sizeof crash, crash);
  char why[256];
  assert_false(af_wire_strings_valid(d, crash, sizeof crash, why, sizeof why));
  assert_string_equal(why, "malformed request: field number 0 is out of range");
  if (m != NULL)
    protobuf_c_message_free_unpacked(m, NULL);
}

static void walk_descends_into_nested_messages(void **state)
{
  (void)state;
  Antifragility__V1__BreakerConfig cfg =
      ANTIFRAGILITY__V1__BREAKER_CONFIG__INIT;
  cfg.description = "fine";
  Antifragility__V1__RegisterBreakerRequest q =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_REQUEST__INIT;
  q.name = "b";
  q.config = &cfg;
  uint8_t buf[256];
  size_t n = antifragility__v1__register_breaker_request__pack(&q, buf);
  char why[256];
  const ProtobufCMessageDescriptor *d =
      &antifragility__v1__register_breaker_request__descriptor;
  assert_true(af_wire_strings_valid(d, buf, n, why, sizeof why));
  size_t at = 0;
  while (at + 4 <= n && memcmp(buf + at, "fine", 4) != 0)
    at++;
  assert_true(at + 4 <= n);
  buf[at + 2] = '\0';
  assert_false(af_wire_strings_valid(d, buf, n, why, sizeof why));
  assert_string_equal(
      why, "malformed request: BreakerConfig.description contains a NUL byte");
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(utf8_accepts_every_valid_length),
      cmocka_unit_test(utf8_refuses_overlong_surrogates_and_truncation),
      cmocka_unit_test(walk_names_the_bad_field),
      cmocka_unit_test(walk_refuses_field_number_zero),
      cmocka_unit_test(walk_descends_into_nested_messages),
  };
  return cmocka_run_group_tests_name("codec", tests, NULL, NULL);
}
