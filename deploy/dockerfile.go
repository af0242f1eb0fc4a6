package deploy

import "strings"

// DockerfileInstructions splits a Dockerfile into its instructions: comments
// and blank lines dropped, backslash continuations joined into one line.
// The fly.toml consistency test and the runtime-image e2e test both read
// the repository's Dockerfile through it.
func DockerfileInstructions(text string) []string {
	var lines []string
	var cont string
	for raw := range strings.Lines(text) {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if head, ok := strings.CutSuffix(line, `\`); ok {
			cont += head + " "
			continue
		}
		lines = append(lines, cont+line)
		cont = ""
	}
	return lines
}
