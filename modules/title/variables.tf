variable "name" {
  description = "The title's name: the build and fleet are named after it, and each zone's name is `<name>-<zone key>`. Letters, digits, `-` and `_`."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]+$", var.name))
    error_message = "name may only contain ASCII letters, digits, '-' and '_'."
  }
}

variable "build_source" {
  description = "Where the server build is: `file:///abs/dir`, `file:///abs/pkg.tar.gz`, `s3://bucket/key` or `https://…`."
  type        = string
}

variable "build_version" {
  description = "Version label of the build."
  type        = string
  default     = null
}

variable "build_sha256" {
  description = "SHA-256 of an archive build source, checked by every machine that fetches it."
  type        = string
  default     = null
}

variable "launch_path" {
  description = "The server executable, relative to the build's root."
  type        = string
}

variable "launch_parameters" {
  description = "Its arguments; `{port}`, `{process_id}` and `{sdk_addr}` are substituted."
  type        = string
  default     = null
}

variable "sessions_per_process" {
  description = "Sessions one process hosts at once; above 1 the fleet runs in `parallel` session mode."
  type        = number
  default     = 1
}

variable "zones" {
  description = <<-EOT
    The title's zones by key (the zone is named `<name>-<key>`), each with its data centers
    by name: `location` (a location the server offers), `max_server_processes` (the
    capacity), and optionally `processes_per_machine` (default 1), `instance_type` (default:
    the location's name, as `local` and `sim` expect), `priority` (lower is preferred,
    default 0) and, per zone, `initial_server_processes` (default 1).
  EOT
  type = map(object({
    initial_server_processes = optional(number, 1)
    data_centers = map(object({
      location              = string
      max_server_processes  = number
      processes_per_machine = optional(number, 1)
      instance_type         = optional(string)
      priority              = optional(number, 0)
    }))
  }))

  validation {
    condition     = length(var.zones) > 0 && alltrue([for zone in values(var.zones) : length(zone.data_centers) > 0])
    error_message = "zones needs at least one zone, and each zone at least one data center."
  }
}

variable "scaling" {
  description = <<-EOT
    The scaling preset of every zone:
    - `steady`: two idle server processes at any load;
    - `bursty`: two idle processes, and from 50 active sessions on 25% of them on top;
    - `predictive`: the forecast of arrivals while a machine boots, plus one;
    - `fixed`: every data center at its `max_server_processes` (QA and load tests).
  EOT
  type        = string
  default     = "steady"

  validation {
    condition     = contains(["steady", "bursty", "predictive", "fixed"], var.scaling)
    error_message = "scaling must be one of steady, bursty, predictive or fixed."
  }
}

variable "wait_for_capacity" {
  description = "Whether apply waits until each zone's initial server processes are ready."
  type        = bool
  default     = true
}

variable "force_destroy" {
  description = "Let `terraform destroy` end the title's sessions still running."
  type        = bool
  default     = false
}

variable "endpoint" {
  description = "fleetformd's URL as the game's matchmaker reaches it, for the `placement_url` output."
  type        = string
  default     = "http://127.0.0.1:7400"
}
