#ifndef UTIL_H
#define UTIL_H

#define GREETING "Hello"

#endif
