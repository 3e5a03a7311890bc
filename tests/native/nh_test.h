/* nh_test.h - a minimal test harness for the C core's own tests.
 *
 * Each test file defines tests with NH_TEST(name) { ... } and lists them in
 * NH_TEST_MAIN(test_a, test_b, ...). CHECK() records a failure and goes on;
 * REQUIRE() stops the current test. The runner prints
 * "N passed, M failed" and exits non-zero on failure.
 */
#ifndef NH_TEST_H
#define NH_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int nh_test_failures_in_current __attribute__((unused));

#define NH_TEST(name) static void name(void)

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            nh_test_failures_in_current++;                                          \
        }                                                                           \
    } while (0)

#define REQUIRE(cond)                                                                 \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "  %s:%d: REQUIRE(%s) failed\n", __FILE__, __LINE__, #cond); \
            nh_test_failures_in_current++;                                            \
            return;                                                                   \
        }                                                                             \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                              \
    do {                                                                                \
        long long nh_a_ = (long long)(a), nh_b_ = (long long)(b);                       \
        if (nh_a_ != nh_b_) {                                                           \
            fprintf(stderr, "  %s:%d: %s == %s failed (%lld != %lld)\n", __FILE__,      \
                    __LINE__, #a, #b, nh_a_, nh_b_);                                    \
            nh_test_failures_in_current++;                                              \
        }                                                                               \
    } while (0)

typedef struct {
    const char *name;
    void (*fn)(void);
} nh_test_case;

__attribute__((unused)) static int nh_test_run(const nh_test_case *cases, size_t n, const char *file) {
    int passed = 0, failed = 0;
    const char *only = getenv("NH_TEST_ONLY");
    for (size_t i = 0; i < n; i++) {
        if (only && strcmp(only, cases[i].name) != 0)
            continue;
        nh_test_failures_in_current = 0;
        cases[i].fn();
        if (nh_test_failures_in_current) {
            fprintf(stderr, "FAIL %s: %s\n", file, cases[i].name);
            failed++;
        } else {
            passed++;
        }
    }
    printf("%s: %d passed, %d failed\n", file, passed, failed);
    return failed ? 1 : 0;
}

#define NH_CASE(fn) {#fn, fn}
#define NH_TEST_MAIN(...)                                                        \
    int main(void) {                                                             \
        static const nh_test_case cases[] = {__VA_ARGS__};                       \
        nh_test_setup();                                                         \
        return nh_test_run(cases, sizeof(cases) / sizeof(cases[0]), __FILE__);   \
    }

/* Installs libsodium into nh_crypto (defined in nh_test_support.c). */
void nh_test_setup(void);

#endif
