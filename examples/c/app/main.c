#include <stdio.h>
#include "greet.h"

int main(int argc, char **argv) {
    char name[64], line[128];
    shout(name, sizeof name, argc > 1 ? argv[1] : "world");
    greet(line, sizeof line, name);
    puts(line);
    return 0;
}
