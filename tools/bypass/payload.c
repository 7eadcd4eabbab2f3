/* The bypass catalogue's payload library (tools/bypass/README.md). Loading it is the attack, so
 * its constructor leaves the evidence at once: an empty file at MARKER, a path compiled in with
 * -DMARKER='"/path/to/marker"'. The evidence is a file, not output, because LD_AUDIT, --preload
 * and ctypes.CDLL run it inside another program whose output says nothing.
 * la_version makes it a valid LD_AUDIT module as well; without it the loader would refuse the
 * library as an auditor, and the LD_AUDIT row would prove nothing. */
#include <stdio.h>

#ifndef MARKER
#error "build with -DMARKER='\"/path/to/marker\"'"
#endif

__attribute__((constructor)) static void leave_evidence(void) {
    FILE *marker = fopen(MARKER, "w");
    if (marker) fclose(marker);
}

unsigned int la_version(unsigned int version) { return version; }
