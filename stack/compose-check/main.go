// Command compose-check loads a Compose project the way `docker compose config` does (same
// library, compose-go, and the same option sequence: OS environment, the project's `.env`,
// interpolation, schema validation, normalization, consistency checks) and prints the resolved
// model as JSON. It needs no Docker engine, so tests/test_stack_config.py can check
// docker-compose.yml on machines without one.
//
// Usage: go run . [-C project-dir] [compose-file ...]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	dir := flag.String("C", ".", "project directory (where .env is read from)")
	flag.Parse()

	options, err := cli.NewProjectOptions(flag.Args(),
		cli.WithWorkingDirectory(*dir),
		cli.WithOsEnv,
		cli.WithEnvFiles(),
		cli.WithConfigFileEnv,
		cli.WithDefaultConfigPath,
		cli.WithDotEnv,
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
	)
	if err != nil {
		fail("compose options", err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail("invalid compose project", err)
	}
	raw, err := project.MarshalJSON()
	if err != nil {
		fail("rendering the project", err)
	}
	fmt.Println(string(raw))
}

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	os.Exit(1)
}
