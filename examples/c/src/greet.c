#include <stdio.h>
#include "greet.h"
#include "util.h"

int greet(char *buf, int size, const char *name) {
    return snprintf(buf, size, "%s, %s!", GREETING, name);
}
