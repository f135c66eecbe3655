// A Go program compiled at build time with Debian's Go and run as init by tailor.
package main

import (
	"fmt"
	"runtime"
)

func main() {
	fmt.Printf("Hello from Go %s running as init (%s/%s)\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
