// Command render is a stand-in for `helm template`, for checking the chart
// where no helm binary can be installed (the test suite, CI).
//
// It is built from the same parts Helm's engine is (pkg/engine, pkg/chartutil,
// pkg/releaseutil of Helm 3): Go's text/template, the sprig function library
// minus env/expandenv, Helm's own functions (include, tpl, required, toYaml,
// fromYaml, fromYamlArray, toJson, fromJson, fromJsonArray, lookup), values
// read with the YAML-via-JSON decoder Helm uses (numbers become float64, as
// in Helm), `-f` files merged over the chart's values.yaml the way Helm
// coalesces them (maps merge deeply, a null removes a default), templates
// parsed into one set so every file sees every `define`, "missingkey=zero"
// with "<no value>" removed, partials (`_*`) not rendered, and the output
// split into documents, checked as YAML and sorted in Helm's install order.
//
// Helm imports github.com/Masterminds/sprig/v3 and sigs.k8s.io/yaml; here the
// same code comes from Debian's GOPATH packages: sprig v3 under its GOPATH path
// (hence the imports without /v3), and github.com/ghodss/yaml, of which
// sigs.k8s.io/yaml is a fork with the same Marshal/Unmarshal.  Not supported,
// because this chart needs none of it: subcharts, .Files, --set, and a live
// cluster (lookup returns an empty map, as under `helm template`).
//
// Build (offline, Debian's Go packages):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o _build/helmrender ./helm/tools/render
//
// Use:
//
//	helmrender [-f values.yaml]... [--name N] [--namespace NS] [--kube-version V]
//	           [--api-versions G/V]... [--output yaml|json] CHART_DIR
//
// `--output json` prints {"manifests": [{"source", "content"}], "notes",
// "values"}: the merged values are what Helm validates against
// values.schema.json, which the tests do with the same data.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/ioutil"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/semver" // module .../v3 (GOPATH layout)
	"github.com/Masterminds/sprig"  // module .../v3 (GOPATH layout)
	"github.com/ghodss/yaml"
)

// Metadata mirrors the fields of Helm's chart.Metadata templates can read as .Chart.X.
type Metadata struct {
	Name         string            `json:"name,omitempty"`
	Home         string            `json:"home,omitempty"`
	Sources      []string          `json:"sources,omitempty"`
	Version      string            `json:"version,omitempty"`
	Description  string            `json:"description,omitempty"`
	Keywords     []string          `json:"keywords,omitempty"`
	Maintainers  []interface{}     `json:"maintainers,omitempty"`
	Icon         string            `json:"icon,omitempty"`
	APIVersion   string            `json:"apiVersion,omitempty"`
	Condition    string            `json:"condition,omitempty"`
	Tags         string            `json:"tags,omitempty"`
	AppVersion   string            `json:"appVersion,omitempty"`
	Deprecated   bool              `json:"deprecated,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	KubeVersion  string            `json:"kubeVersion,omitempty"`
	Dependencies []interface{}     `json:"dependencies,omitempty"`
	Type         string            `json:"type,omitempty"`
}

// KubeVersion and Capabilities mirror chartutil's types.
type KubeVersion struct {
	Version string
	Major   string
	Minor   string
}

func (kv KubeVersion) String() string { return kv.Version }

// GitVersion is kept for charts written for Helm 2.
func (kv KubeVersion) GitVersion() string { return kv.Version }

type VersionSet []string

// Has reports whether "group/version" or "group/version/Kind" is served.
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
}

// builtinAPIVersions: the group/versions of a plain cluster that charts test for.
var builtinAPIVersions = []string{
	"v1", "apps/v1", "batch/v1", "autoscaling/v1", "autoscaling/v2", "policy/v1",
	"networking.k8s.io/v1", "rbac.authorization.k8s.io/v1", "storage.k8s.io/v1",
	"apiextensions.k8s.io/v1", "admissionregistration.k8s.io/v1",
	"coordination.k8s.io/v1", "discovery.k8s.io/v1",
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// ---- values (chartutil.ReadValues, CoalesceTables, mergeMaps)

func readValues(file string) (map[string]interface{}, error) {
	data, err := ioutil.ReadFile(file)
	if err != nil {
		return nil, err
	}
	vals := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &vals); err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	if vals == nil {
		vals = map[string]interface{}{}
	}
	return vals, nil
}

// mergeMaps is how helm merges several -f files: later files win, maps merge deeply.
func mergeMaps(a, b map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if vm, ok := v.(map[string]interface{}); ok {
			if om, ok := out[k].(map[string]interface{}); ok {
				out[k] = mergeMaps(om, vm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// coalesce lays the chart defaults under the user's values; a user null deletes the key.
func coalesce(user, defaults map[string]interface{}) map[string]interface{} {
	for key, dv := range defaults {
		uv, ok := user[key]
		if !ok {
			user[key] = deepCopy(dv)
			continue
		}
		if uv == nil {
			delete(user, key)
			continue
		}
		um, uIsMap := uv.(map[string]interface{})
		dm, dIsMap := dv.(map[string]interface{})
		if uIsMap && dIsMap {
			user[key] = coalesce(um, dm)
		} else if uIsMap != dIsMap && dv != nil {
			fmt.Fprintf(os.Stderr, "coalesce.go: warning: cannot overwrite table with non table for %s (%v)\n", key, dv)
		}
	}
	for key, uv := range user {
		if uv == nil {
			delete(user, key)
		}
	}
	return user
}

func deepCopy(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		out := make(map[string]interface{}, len(t))
		for k, x := range t {
			out[k] = deepCopy(x)
		}
		return out
	case []interface{}:
		out := make([]interface{}, len(t))
		for i, x := range t {
			out[i] = deepCopy(x)
		}
		return out
	}
	return v
}

// ---- functions (pkg/engine/funcs.go and engine.go)

func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return "" // Helm swallows errors inside templates
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(str string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromYAMLArray(str string) []interface{} {
	a := []interface{}{}
	if err := yaml.Unmarshal([]byte(str), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(str string) map[string]interface{} {
	m := make(map[string]interface{})
	if err := json.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromJSONArray(str string) []interface{} {
	a := []interface{}{}
	if err := json.Unmarshal([]byte(str), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func funcMap() template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	extra := template.FuncMap{
		"toYaml":        toYAML,
		"fromYaml":      fromYAML,
		"fromYamlArray": fromYAMLArray,
		"toJson":        toJSON,
		"fromJson":      fromJSON,
		"fromJsonArray": fromJSONArray,
		"include":       func(string, interface{}) string { return "not implemented" },
		"tpl":           func(string, interface{}) interface{} { return "not implemented" },
		"required":      func(string, interface{}) (interface{}, error) { return "not implemented", nil },
		"lookup": func(string, string, string, string) (map[string]interface{}, error) {
			return map[string]interface{}{}, nil
		},
	}
	for k, v := range extra {
		f[k] = v
	}
	return f
}

const recursionMaxNums = 1000

func includeFun(t *template.Template, includedNames map[string]int) func(string, interface{}) (string, error) {
	return func(name string, data interface{}) (string, error) {
		var buf strings.Builder
		if v, ok := includedNames[name]; ok {
			if v > recursionMaxNums {
				return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
			}
			includedNames[name]++
		} else {
			includedNames[name] = 1
		}
		err := t.ExecuteTemplate(&buf, name, data)
		includedNames[name]--
		return buf.String(), err
	}
}

func tplFun(parent *template.Template, includedNames map[string]int) func(string, interface{}) (string, error) {
	return func(tpl string, vals interface{}) (string, error) {
		t, err := parent.Clone()
		if err != nil {
			return "", fmt.Errorf("cannot clone template: %v", err)
		}
		t.Option("missingkey=zero")
		t.Funcs(template.FuncMap{
			"include": includeFun(t, includedNames),
			"tpl":     tplFun(t, includedNames),
		})
		t, err = t.New(parent.Name()).Parse(tpl)
		if err != nil {
			return "", fmt.Errorf("cannot parse template %q: %v", tpl, err)
		}
		var buf strings.Builder
		if err := t.Execute(&buf, vals); err != nil {
			return "", fmt.Errorf("error during tpl function execution for %q: %v", tpl, err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
}

func required(warn string, val interface{}) (interface{}, error) {
	if val == nil {
		return val, errors.New(warn)
	} else if s, ok := val.(string); ok && s == "" {
		return val, errors.New(warn)
	}
	return val, nil
}

// ---- rendering

type byPathLen []string

func (p byPathLen) Len() int      { return len(p) }
func (p byPathLen) Swap(i, j int) { p[j], p[i] = p[i], p[j] }
func (p byPathLen) Less(i, j int) bool {
	a, b := p[i], p[j]
	ca, cb := strings.Count(a, "/"), strings.Count(b, "/")
	if ca == cb {
		return strings.Compare(a, b) == -1
	}
	return ca < cb
}

func render(chartName string, templates map[string]string, top map[string]interface{}) (map[string]string, error) {
	t := template.New("gotpl")
	t.Option("missingkey=zero")
	includedNames := make(map[string]int)
	funcs := funcMap()
	funcs["include"] = includeFun(t, includedNames)
	funcs["tpl"] = tplFun(t, includedNames)
	funcs["required"] = required
	t.Funcs(funcs)

	keys := make([]string, 0, len(templates))
	for k := range templates {
		keys = append(keys, k)
	}
	sort.Sort(sort.Reverse(byPathLen(keys)))
	for _, name := range keys {
		if _, err := t.New(name).Parse(templates[name]); err != nil {
			return nil, fmt.Errorf("parse error in %q: %v", name, err)
		}
	}
	rendered := make(map[string]string)
	for _, name := range keys {
		if strings.HasPrefix(path.Base(name), "_") {
			continue
		}
		vals := make(map[string]interface{}, len(top)+1)
		for k, v := range top {
			vals[k] = v
		}
		vals["Template"] = map[string]interface{}{"Name": name, "BasePath": chartName + "/templates"}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, name, vals); err != nil {
			return nil, err
		}
		rendered[name] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}
	return rendered, nil
}

// installOrder is releaseutil.InstallOrder: the order helm template prints kinds in.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService",
}

var sep = regexp.MustCompile(`(?:^|\s*\n)---\s*`)

type manifest struct {
	Source  string `json:"source"`
	Content string `json:"content"`
	kind    string
}

func splitManifests(rendered map[string]string) ([]manifest, error) {
	names := make([]string, 0, len(rendered))
	for name := range rendered {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []manifest
	for _, name := range names {
		ext := filepath.Ext(name)
		if ext != ".yaml" && ext != ".yml" {
			continue // NOTES.txt and friends are not manifests
		}
		for _, doc := range sep.Split(rendered[name], -1) {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var head struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				return nil, fmt.Errorf("YAML parse error on %s: %v", name, err)
			}
			out = append(out, manifest{Source: name, Content: strings.TrimSpace(doc), kind: head.Kind})
		}
	}
	rank := func(kind string) int {
		for i, k := range installOrder {
			if k == kind {
				return i
			}
		}
		return len(installOrder)
	}
	sort.SliceStable(out, func(i, j int) bool { return rank(out[i].kind) < rank(out[j].kind) })
	return out, nil
}

func loadChart(dir string) (*Metadata, map[string]string, error) {
	data, err := ioutil.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, nil, err
	}
	meta := &Metadata{}
	if err := yaml.Unmarshal(data, meta); err != nil {
		return nil, nil, fmt.Errorf("Chart.yaml: %v", err)
	}
	if meta.APIVersion != "v2" {
		return nil, nil, fmt.Errorf("Chart.yaml: apiVersion must be v2")
	}
	if meta.Name == "" {
		return nil, nil, fmt.Errorf("Chart.yaml: name is required")
	}
	if _, err := semver.StrictNewVersion(meta.Version); err != nil {
		return nil, nil, fmt.Errorf("Chart.yaml: version %q is not a valid SemVer 2 version", meta.Version)
	}
	templates := map[string]string{}
	tdir := filepath.Join(dir, "templates")
	err = filepath.Walk(tdir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		body, err := ioutil.ReadFile(p)
		if err != nil {
			return err
		}
		templates[path.Join(meta.Name, filepath.ToSlash(rel))] = string(body)
		return nil
	})
	return meta, templates, err
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "Error: %v\n", err)
	os.Exit(1)
}

func main() {
	var valueFiles, apiVersions multiFlag
	flag.Var(&valueFiles, "f", "values file merged over the chart's values.yaml (repeatable)")
	flag.Var(&apiVersions, "api-versions", "extra group/version the cluster serves (repeatable)")
	name := flag.String("name", "release-name", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "v1.30.0", "Kubernetes version for .Capabilities")
	output := flag.String("output", "yaml", "yaml (like helm template) or json")
	flag.Parse()
	if flag.NArg() != 1 {
		fail(errors.New("usage: helmrender [flags] CHART_DIR"))
	}
	dir := flag.Arg(0)

	meta, templates, err := loadChart(dir)
	if err != nil {
		fail(err)
	}
	kv, err := semver.NewVersion(*kubeVersion)
	if err != nil {
		fail(fmt.Errorf("invalid kube version %q: %v", *kubeVersion, err))
	}
	if meta.KubeVersion != "" {
		constraint, err := semver.NewConstraint(meta.KubeVersion)
		if err != nil {
			fail(fmt.Errorf("Chart.yaml: invalid kubeVersion %q", meta.KubeVersion))
		}
		if !constraint.Check(kv) {
			fail(fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", meta.KubeVersion, *kubeVersion))
		}
	}

	defaults, err := readValues(filepath.Join(dir, "values.yaml"))
	if err != nil {
		fail(err)
	}
	user := map[string]interface{}{}
	for _, file := range valueFiles {
		vals, err := readValues(file)
		if err != nil {
			fail(err)
		}
		user = mergeMaps(user, vals)
	}
	values := coalesce(user, defaults)

	top := map[string]interface{}{
		"Values": values,
		"Release": map[string]interface{}{
			"Name": *name, "Namespace": *namespace, "Revision": 1,
			"IsUpgrade": false, "IsInstall": true, "Service": "Helm",
		},
		"Chart": meta,
		"Capabilities": &Capabilities{
			KubeVersion: KubeVersion{
				Version: "v" + kv.String(),
				Major:   fmt.Sprint(kv.Major()),
				Minor:   fmt.Sprint(kv.Minor()),
			},
			APIVersions: append(VersionSet(builtinAPIVersions), apiVersions...),
		},
		"Files":     map[string]interface{}{},
		"Subcharts": map[string]interface{}{},
	}
	rendered, err := render(meta.Name, templates, top)
	if err != nil {
		fail(err)
	}
	manifests, err := splitManifests(rendered)
	if err != nil {
		fail(err)
	}
	notes := rendered[meta.Name+"/templates/NOTES.txt"]

	if *output == "json" {
		if manifests == nil {
			manifests = []manifest{}
		}
		out, err := json.MarshalIndent(map[string]interface{}{
			"manifests": manifests, "notes": notes, "values": values,
		}, "", "  ")
		if err != nil {
			fail(err)
		}
		os.Stdout.Write(append(out, '\n'))
		return
	}
	for _, m := range manifests {
		fmt.Printf("---\n# Source: %s\n%s\n", m.Source, m.Content)
	}
}
