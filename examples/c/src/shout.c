#include <ctype.h>
#include "greet.h"

int shout(char *buf, int size, const char *name) {
    int n = 0;
    for (; name[n] && n < size - 1; n++)
        buf[n] = (char)toupper((unsigned char)name[n]);
    buf[n] = '\0';
    return n;
}
