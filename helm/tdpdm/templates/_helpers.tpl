{{/*
Names, labels and the pod-template pieces shared by the RayCluster and the RayJob.
*/}}

{{- define "tdpdm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tdpdm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* RayCluster name: KubeRay derives pod and service names from it, so keep it short. */}}
{{- define "tdpdm.clusterName" -}}
{{- default (include "tdpdm.fullname" .) .Values.rayCluster.name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "tdpdm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tdpdm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tdpdm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tdpdm.labels" -}}
helm.sh/chart: {{ include "tdpdm.chart" . }}
{{ include "tdpdm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tdpdm
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tdpdm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tdpdm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image reference; call with (dict "root" $ "gpu" true/false). A digest wins over a tag. */}}
{{- define "tdpdm.image" -}}
{{- $v := .root.Values.image -}}
{{- if .gpu -}}
{{- if $v.gpuDigest -}}
{{- printf "%s@%s" $v.repository $v.gpuDigest -}}
{{- else -}}
{{- printf "%s:%s" $v.repository (default (printf "%s-gpu" .root.Chart.AppVersion) $v.gpuTag) -}}
{{- end -}}
{{- else -}}
{{- if $v.digest -}}
{{- printf "%s@%s" $v.repository $v.digest -}}
{{- else -}}
{{- printf "%s:%s" $v.repository (default (printf "%s-cpu" .root.Chart.AppVersion) $v.tag) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Pod-level security context (DESIGN 5). */}}
{{- define "tdpdm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.security.runAsUser }}
runAsGroup: {{ .Values.security.runAsGroup }}
fsGroup: {{ .Values.security.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security context: repeated per container so no container can miss it. */}}
{{- define "tdpdm.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.security.runAsUser }}
runAsGroup: {{ .Values.security.runAsGroup }}
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: {{ .Values.security.readOnlyRootFilesystem }}
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment shared by every Ray container: object-store access and pipeline settings. */}}
{{- define "tdpdm.env" -}}
{{- $s3 := .Values.s3 -}}
{{- if $s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: {{ $s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: {{ $s3.secretAccessKeyKey }}
{{- if $s3.sessionTokenKey }}
- name: AWS_SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: {{ $s3.sessionTokenKey }}
{{- end }}
{{- end }}
{{- if $s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ $s3.endpoint | quote }}
{{- end }}
{{- if $s3.region }}
- name: AWS_REGION
  value: {{ $s3.region | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ $s3.region | quote }}
{{- end }}
# A privacy product does not phone home: Ray's usage statistics stay off.
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- if .Values.security.readOnlyRootFilesystem }}
- name: XDG_CACHE_HOME
  value: /tmp/cache
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes shared by every Ray pod. */}}
{{- define "tdpdm.volumes" -}}
- name: ray-tmp
  emptyDir:
    sizeLimit: {{ .Values.rayTmpSizeLimit }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shmSizeLimit }}
{{- if .Values.security.readOnlyRootFilesystem }}
- name: tmp
  emptyDir:
    sizeLimit: 2Gi
{{- end }}
{{- if .Values.sharedStorage.existingClaim }}
- name: shared
  persistentVolumeClaim:
    claimName: {{ .Values.sharedStorage.existingClaim }}
{{- end }}
{{- if .Values.pipeline.configInline }}
- name: pipeline-config
  configMap:
    name: {{ include "tdpdm.fullname" . }}-pipeline
{{- end }}
{{- end -}}

{{- define "tdpdm.volumeMounts" -}}
{{- if .Values.security.readOnlyRootFilesystem }}
- name: tmp
  mountPath: /tmp
{{- end }}
- name: ray-tmp
  mountPath: /tmp/ray
- name: dshm
  mountPath: /dev/shm
{{- if .Values.sharedStorage.existingClaim }}
- name: shared
  mountPath: {{ .Values.sharedStorage.mountPath }}
{{- end }}
{{- if .Values.pipeline.configInline }}
- name: pipeline-config
  mountPath: /etc/tdpdm
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod labels: the chart's selector labels (NetworkPolicy, PodMonitor) plus user labels. */}}
{{- define "tdpdm.podLabels" -}}
{{ include "tdpdm.selectorLabels" . }}
app.kubernetes.io/component: ray
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
A worker group; call with (dict "root" $ "group" .Values.workers "gpu" bool).
*/}}
{{- define "tdpdm.workerGroup" -}}
{{- $root := .root -}}
{{- $g := .group -}}
{{- if or (lt (int $g.replicas) (int $g.minReplicas)) (gt (int $g.replicas) (int $g.maxReplicas)) -}}
{{- fail (printf "worker group %q: need minReplicas (%v) <= replicas (%v) <= maxReplicas (%v)" $g.groupName $g.minReplicas $g.replicas $g.maxReplicas) -}}
{{- end -}}
- groupName: {{ $g.groupName }}
  replicas: {{ $g.replicas }}
  minReplicas: {{ $g.minReplicas }}
  maxReplicas: {{ $g.maxReplicas }}
  {{- if $root.Values.autoscaling.enabled }}
  idleTimeoutSeconds: {{ $root.Values.autoscaling.idleTimeoutSeconds }}
  {{- end }}
  rayStartParams:
    {{- range $k, $v := $g.rayStartParams }}
    {{ $k }}: {{ $v | toString | quote }}
    {{- else }} {}
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "tdpdm.podLabels" $root | trim | nindent 8 }}
        tdpdm.io/ray-node: {{ ternary "gpu-worker" "worker" .gpu }}
        {{- with $g.labels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with (merge (dict) $g.annotations $root.Values.podAnnotations) }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "tdpdm.serviceAccountName" $root }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "tdpdm.podSecurityContext" $root | trim | nindent 8 }}
      {{- with $root.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      {{- with $root.Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $g.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $g.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $g.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: ray-worker
          image: {{ include "tdpdm.image" (dict "root" $root "gpu" .gpu) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          securityContext:
            {{- include "tdpdm.containerSecurityContext" $root | trim | nindent 12 }}
          ports:
            - name: metrics
              containerPort: 8080
              protocol: TCP
            - name: tdpdm-metrics
              containerPort: {{ $root.Values.pipeline.metricsPort }}
              protocol: TCP
          env:
            {{- include "tdpdm.env" $root | trim | nindent 12 }}
          resources:
            requests:
              {{- toYaml $g.resources.requests | nindent 14 }}
            limits:
              {{- toYaml $g.resources.limits | nindent 14 }}
              {{- if .gpu }}
              {{ $g.resourceName }}: {{ $g.gpusPerWorker }}
              {{- end }}
          volumeMounts:
            {{- include "tdpdm.volumeMounts" $root | trim | nindent 12 }}
      volumes:
        {{- include "tdpdm.volumes" $root | trim | nindent 8 }}
{{- end -}}

{{/*
The RayCluster spec, shared by the RayCluster object and the RayJob's own cluster.
*/}}
{{- define "tdpdm.rayClusterSpec" -}}
{{- $h := .Values.head -}}
rayVersion: {{ .Values.ray.version | quote }}
{{- if ne .Values.ray.auth.mode "disabled" }}
authOptions:
  mode: {{ .Values.ray.auth.mode }}
  {{- with .Values.ray.auth.secretName }}
  secretName: {{ . }}
  {{- end }}
{{- end }}
enableInTreeAutoscaling: {{ .Values.autoscaling.enabled }}
{{- if .Values.autoscaling.enabled }}
autoscalerOptions:
  version: {{ .Values.autoscaling.version }}
  upscalingMode: {{ .Values.autoscaling.upscalingMode }}
  idleTimeoutSeconds: {{ .Values.autoscaling.idleTimeoutSeconds }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  resources:
    {{- toYaml .Values.autoscaling.resources | nindent 4 }}
  securityContext:
    {{- include "tdpdm.containerSecurityContext" . | trim | nindent 4 }}
{{- end }}
headGroupSpec:
  serviceType: {{ $h.serviceType }}
  rayStartParams:
    {{- range $k, $v := $h.rayStartParams }}
    {{ $k }}: {{ $v | toString | quote }}
    {{- else }} {}
    {{- end }}
  template:
    metadata:
      labels:
        {{- include "tdpdm.podLabels" . | trim | nindent 8 }}
        tdpdm.io/ray-node: head
        {{- with $h.labels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with (merge (dict) $h.annotations .Values.podAnnotations) }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ include "tdpdm.serviceAccountName" . }}
      # Only the autoscaler sidecar talks to the Kubernetes API.
      automountServiceAccountToken: {{ .Values.autoscaling.enabled }}
      securityContext:
        {{- include "tdpdm.podSecurityContext" . | trim | nindent 8 }}
      {{- with .Values.image.pullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      {{- with .Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $h.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $h.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $h.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: ray-head
          image: {{ include "tdpdm.image" (dict "root" . "gpu" false) }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          securityContext:
            {{- include "tdpdm.containerSecurityContext" . | trim | nindent 12 }}
          ports:
            - name: gcs-server
              containerPort: 6379
              protocol: TCP
            - name: dashboard
              containerPort: 8265
              protocol: TCP
            - name: client
              containerPort: 10001
              protocol: TCP
            - name: metrics
              containerPort: 8080
              protocol: TCP
            - name: tdpdm-metrics
              containerPort: {{ .Values.pipeline.metricsPort }}
              protocol: TCP
          env:
            {{- include "tdpdm.env" . | trim | nindent 12 }}
          resources:
            {{- toYaml $h.resources | nindent 12 }}
          volumeMounts:
            {{- include "tdpdm.volumeMounts" . | trim | nindent 12 }}
      volumes:
        {{- include "tdpdm.volumes" . | trim | nindent 8 }}
{{- if or .Values.workers.enabled .Values.gpuWorkers.enabled }}
workerGroupSpecs:
{{- if .Values.workers.enabled }}
{{ include "tdpdm.workerGroup" (dict "root" . "group" .Values.workers "gpu" false) }}
{{- end }}
{{- if .Values.gpuWorkers.enabled }}
{{ include "tdpdm.workerGroup" (dict "root" . "group" .Values.gpuWorkers "gpu" true) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The `tdpdm run` command line of the RayJob; every value is shell-quoted. */}}
{{- define "tdpdm.entrypoint" -}}
{{- if .Values.rayJob.entrypointOverride -}}
{{- .Values.rayJob.entrypointOverride -}}
{{- else -}}
{{- $p := .Values.pipeline -}}
{{- $args := list "tdpdm" "run" -}}
{{- if $p.configInline -}}
{{- $args = concat $args (list "--config" "/etc/tdpdm/config.yaml") -}}
{{- else if $p.config -}}
{{- $args = concat $args (list "--config" (squote $p.config)) -}}
{{- end -}}
{{- if $p.data -}}
{{- $args = concat $args (list "--data" (squote $p.data)) -}}
{{- if $p.dataName -}}
{{- $args = concat $args (list "--set" (squote (printf "dataset=%s" $p.dataName))) -}}
{{- end -}}
{{- if gt (int $p.imageSize) 0 -}}
{{- $args = concat $args (list "--image-size" (toString (int $p.imageSize))) -}}
{{- end -}}
{{- if gt (int $p.channels) 0 -}}
{{- $args = concat $args (list "--channels" (toString (int $p.channels))) -}}
{{- end -}}
{{- if $p.classes -}}
{{- $args = concat $args (list "--classes" (squote (join "," $p.classes))) -}}
{{- end -}}
{{- if $p.dataTest -}}
{{- $args = concat $args (list "--data-test" (squote $p.dataTest)) -}}
{{- end -}}
{{- if $p.privacyUnit -}}
{{- $args = concat $args (list "--privacy-unit" (squote $p.privacyUnit)) -}}
{{- $args = concat $args (list "--records-per-unit" (toString (int $p.recordsPerUnit))) -}}
{{- end -}}
{{- else -}}
{{- $args = concat $args (list "--dataset" (squote $p.dataset) "--data-dir" (squote $p.dataDir)) -}}
{{- end -}}
{{- $args = concat $args (list "--epsilon" (toString $p.epsilon) "--delta" (toString $p.delta)) -}}
{{- $args = concat $args (list "--mode" $p.mode) -}}
{{- if gt (int $p.subset) 0 -}}
{{- $args = concat $args (list "--subset" (toString (int $p.subset))) -}}
{{- end -}}
{{- $args = concat $args (list "--seed" (toString (int $p.seed)) "--device" $p.device) -}}
{{- $args = concat $args (list "--ledger" (squote $p.ledger) "--out" (squote $p.out)) -}}
{{- $args = concat $args (list "--metrics-port" (toString (int $p.metricsPort))) -}}
{{- range $p.extraArgs -}}
{{- $args = append $args (squote .) -}}
{{- end -}}
{{- join " " $args -}}
{{- end -}}
{{- end -}}
