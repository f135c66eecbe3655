/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Included before every C file of the fake kernel (the fake kbuild passes -include), as
 * Linux's own kconfig.h is: the options of the .config as macros, and the test macros.
 */
#ifndef _LINUX_KCONFIG_H
#define _LINUX_KCONFIG_H

#include <generated/autoconf.h>

/*
 * For #if lines only: an option that is not set is an undefined name there, which counts
 * as 0. The fake kernel has no modules, so built in and enabled are the same.
 */
#define IS_BUILTIN(option) ((option) + 0)
#define IS_ENABLED(option) IS_BUILTIN(option)

#endif /* _LINUX_KCONFIG_H */
