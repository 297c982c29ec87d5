#ifndef GREET_H
#define GREET_H

/* Writes a greeting for name into buf (at most size bytes); returns its length. */
int greet(char *buf, int size, const char *name);

/* name in capitals, into buf. */
int shout(char *buf, int size, const char *name);

#endif
